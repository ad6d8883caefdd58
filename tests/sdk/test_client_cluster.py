"""The client against the real control plane (no mock API server): CRUD, watches, failures, logs.

Needs the control plane binaries (`make cluster-binaries`); the tests that run training also need the
operator (started here as `python -m transferjob_operator`) and the test node agent, which runs the
trainer pods as local processes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from transferjob import (
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    Mode,
    Phase,
    TransferJob,
    TransferJobClient,
)
from transferjob.client import EpochCompleted, PhaseChanged

pytestmark = pytest.mark.cluster

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crd" / "transferjob.io_transferjobs.yaml"


@pytest.fixture(scope="module")
def crd(apply_yaml: Callable[..., list[dict[str, Any]]], kubectl: Callable[..., Any]) -> None:
    apply_yaml(CRD)
    kubectl("wait", "--for=condition=Established", "crd/transferjobs.transferjob.io", "--timeout=60s")


@pytest.fixture(scope="module")
def operator(
    crd: None, kubeconfig: Path, node_agent: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transferjob_operator",
                "--kubeconfig",
                str(kubeconfig),
                "-A",
                "--interval",
                "0.5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def client(crd: None, kubeconfig: Path, namespace: str) -> TransferJobClient:
    return TransferJobClient(kubeconfig=kubeconfig, namespace=namespace)


def job(data: Path, out: Path, name: str | None = None, epochs: int = 2, **labels: str) -> TransferJob:
    return TransferJob.model_validate(
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "model": {"base": "MobileNetV2", "weights": "none", "imageSize": 32},
                "data": {"source": {"hostPath": str(data)}, "augmentation": {"enabled": False}},
                "training": {"epochs": epochs, "batchSize": 32},
                "output": {"location": {"hostPath": str(out)}},
                "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
                "runPolicy": {"backoffLimit": 0},
            },
        }
    )


def test_namespace_comes_from_the_kubeconfig_context(crd: None, kubeconfig: Path) -> None:
    assert TransferJobClient(kubeconfig=kubeconfig).namespace == "default"


def test_submit_get_list_delete(client: TransferJobClient, tmp_path: Path) -> None:
    named = client.submit(job(tmp_path, tmp_path / "o1", team="vision"), name="custom-name")
    generated = client.submit(job(tmp_path, tmp_path / "o2"))
    assert named == "custom-name" and generated.startswith("mobilenetv2-fe-") and len(generated) == 20
    got = client.get(named)
    assert got.metadata.namespace == client.namespace and got.spec.training.epochs == 2
    assert got.spec.model.image_size == 32 and got.metadata.uid
    assert sorted(j.metadata.name or "" for j in client.list()) == sorted([named, generated])
    assert [j.metadata.name for j in client.list(label_selector="team=vision")] == [named]
    client.delete(named)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.get(named)
        except JobNotFoundError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("deleted TransferJob still readable after 30s")
    with pytest.raises(JobNotFoundError, match="'custom-name' not found in namespace"):
        client.delete(named)


def test_wait_times_out_on_a_job_nobody_runs(client: TransferJobClient, tmp_path: Path) -> None:
    name = client.submit(job(tmp_path, tmp_path / "o"))
    started = time.monotonic()
    with pytest.raises(JobTimeoutError) as caught:
        client.wait(name, timeout=2)
    assert 1.5 < time.monotonic() - started < 10 and caught.value.name == name


def test_watch_ends_with_not_found_when_the_job_is_deleted(client: TransferJobClient, tmp_path: Path) -> None:
    name = client.submit(job(tmp_path, tmp_path / "o"))
    threading.Timer(1.0, client.delete, args=(name,)).start()
    with pytest.raises(JobNotFoundError):
        list(client.watch(name, timeout=30))


def test_failed_job_raises_with_its_reason(operator: None, client: TransferJobClient, tmp_path: Path) -> None:
    empty = tmp_path / "no-images"
    for split in ("train", "val", "test"):
        (empty / split).mkdir(parents=True)
    name = client.submit(job(empty, tmp_path / "out"))
    with pytest.raises(JobFailedError) as caught:
        client.wait(name, timeout=120)
    assert caught.value.reason == "InvalidData" and caught.value.message
    assert caught.value.job.status and caught.value.job.status.phase is Phase.FAILED
    assert any(e.type == "Warning" for e in client.events(name))
    assert any('"event":"failed"' in line for line in client.logs(name))


@pytest.mark.trainer
def test_training_epochs_arrive_in_order_and_logs_follow(
    operator: None, client: TransferJobClient, tmp_path: Path
) -> None:
    from transferjob.datasets import main as datasets_main

    data = tmp_path / "digits"
    assert datasets_main(["digits", str(data), "--digits", "0-4", "--size", "32"]) == 0
    name = client.submit(job(data, tmp_path / "out", epochs=3), name="digits")
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(client.logs(name, follow=True)), daemon=True)
    follower.start()  # before the pod exists: logs waits for it
    events = list(client.watch(name, timeout=300))
    assert [e.epoch for e in events if isinstance(e, EpochCompleted)] == [1, 2, 3]
    final = events[-1]
    assert isinstance(final, PhaseChanged) and final.phase is Phase.SUCCEEDED
    assert final.status.test and final.status.model
    follower.join(60)
    assert not follower.is_alive(), "logs(follow=True) did not end when the job finished"
    assert sum('"event":"epoch"' in line for line in followed) == 3
    tuned = client.fine_tune(from_job=name, epochs=1, fine_tune_at=100)
    tuned_job = client.get(tuned)
    assert (tuned_job.spec.mode, tuned_job.spec.model.from_job) == (Mode.FINE_TUNING, name)
    assert client.wait(tuned, timeout=300).status.phase is Phase.SUCCEEDED  # type: ignore[union-attr]
