"""The client against the real node's cluster (no mock API server): CRUD, watches, failures, logs.

The cluster is tests/conftest.py's ``real_cluster``; the tests that run training also need the operator
(started here as `python -m transferjob_operator`, with ``--trainer-image`` our trainer image), and
``logs(follow=True)`` streams from the real kubelet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
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
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.cluster.volumes import share_read_only
from transferjob_testing.harness import (
    POD_BASE,
    OperatorProcess,
    digits_spec,
    install,
    make_digits,
    pod_data,
    pod_output,
    serving_operator,
)

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def crd(real_api: Any) -> None:
    install(real_api)  # the CRD, the operator's namespace and RBAC, as tests/operator does


@pytest.fixture(scope="module")
def operator(
    crd: None, real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    root = tmp_path_factory.mktemp("sdk-operator")
    args = ("--trainer-image", real_cluster.trainer_image)
    with serving_operator(real_cluster.api, real_cluster.kubeconfig, root, args) as process:
        yield process


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Digits 5-9 and a small CNN pretrained on 0-4 (the operator tests' transfer task), the model in
    the data folder where the pod sees it (`POD_BASE`)."""
    data, source = make_digits(tmp_path_factory.mktemp("sdk-digits"))
    return pod_data(data, source), source


@pytest.fixture()
def client(crd: None, real_cluster: RealCluster, node_namespace: str) -> TransferJobClient:
    return TransferJobClient(kubeconfig=real_cluster.kubeconfig, namespace=node_namespace)


def job(data: Path, out: Path, base: str = "MobileNetV2", epochs: int = 2, **labels: str) -> TransferJob:
    """A job reading `data` (made readable to the pod) and writing `out` (its parent handed to the pod)."""
    share_read_only(data)
    spec = digits_spec(
        {"hostPath": str(data)}, {"hostPath": str(pod_output(out.parent, out.name))}, base, epochs=epochs
    )
    spec["runPolicy"] = {"backoffLimit": 0}
    if base == "MobileNetV2":
        spec["model"]["weights"] = "none"
    return TransferJob.model_validate({"metadata": {"labels": labels}, "spec": spec})


def test_namespace_comes_from_the_kubeconfig_context(crd: None, real_cluster: RealCluster) -> None:
    assert TransferJobClient(kubeconfig=real_cluster.kubeconfig).namespace == "default"


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


def test_wait_times_out_on_a_job_that_does_not_finish(client: TransferJobClient, tmp_path: Path) -> None:
    # Suspended, so it cannot finish even where an operator from another test module serves this
    # namespace (the per-test namespaces all match the e2e operator's tj-test-* pattern).
    unfinished = job(tmp_path, tmp_path / "o")
    unfinished.spec.run_policy.suspend = True
    name = client.submit(unfinished)
    started = time.monotonic()
    with pytest.raises(JobTimeoutError) as caught:
        client.wait(name, timeout=2)
    assert 1.5 < time.monotonic() - started < 10 and caught.value.name == name


def test_watch_ends_with_not_found_when_the_job_is_deleted(client: TransferJobClient, tmp_path: Path) -> None:
    unfinished = job(tmp_path, tmp_path / "o")
    unfinished.spec.run_policy.suspend = True  # still there when the delete comes, whoever serves it
    name = client.submit(unfinished)
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
    operator: OperatorProcess, client: TransferJobClient, digits: tuple[Path, Path], tmp_path: Path
) -> None:
    data, _ = digits
    name = client.submit(job(data, tmp_path / "features", base=POD_BASE, epochs=3), name="digits")
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(client.logs(name, follow=True)), daemon=True)
    follower.start()  # before the pod exists: logs waits for it
    events = list(client.watch(name, timeout=300))
    assert [e.epoch for e in events if isinstance(e, EpochCompleted)] == [1, 2, 3]
    final = events[-1]
    assert isinstance(final, PhaseChanged) and final.phase is Phase.SUCCEEDED, (final.reason, final.message)
    assert final.status.test and final.status.model
    follower.join(60)
    assert not follower.is_alive(), "logs(follow=True) did not end when the job finished"
    assert sum('"event":"epoch"' in line for line in followed) == 3
    assert [e.reason for e in client.events(name)], "the operator recorded no events"

    tuned = client.fine_tune(from_job=name, epochs=1, fine_tune_at=0)
    tuned_job = client.get(tuned)
    assert (tuned_job.spec.mode, tuned_job.spec.model.from_job) == (Mode.FINE_TUNING, name)
    done = client.wait(tuned, timeout=300)
    assert done.status and done.status.phase is Phase.SUCCEEDED
