"""A TransferJob's life after creation, on the real node: TTL, suspend/resume, Kueue, immutability.

Each test runs an operator of its own (scoped to its own namespace), because some stop and start it;
the trainer runs in our image (tests/operator/ops.py).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.operator import ops
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.harness import (
    OperatorProcess,
    digits_spec,
    install,
    paced_spec,
    pod_output,
    service_account_kubeconfig,
    transferjob,
)

pytestmark = [pytest.mark.node, pytest.mark.e2e, pytest.mark.timeout(600)]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@pytest.fixture()
def lc(real_cluster: RealCluster) -> Iterator[ops.Namespace]:
    install(real_cluster.api)
    with ops.own_namespace(real_cluster.api, "tj-lc") as ns:
        yield ops.Namespace(real_cluster.api, ns)


@pytest.fixture()
def own_operator(real_cluster: RealCluster, lc: ops.Namespace, tmp_path: Path) -> Iterator[OperatorProcess]:
    sa = service_account_kubeconfig(real_cluster.api, real_cluster.kubeconfig, tmp_path / "kubeconfig")
    log = tmp_path / "operator.log"
    process = ops.operator(sa, log, lc.ns, image=real_cluster.trainer_image).start()
    yield process
    process.stop()
    print(f"operator log: {process.log_path}")


@pytest.fixture()
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return ops.shared_digits(tmp_path_factory.getbasetemp())


def _output(tmp_path: Path) -> dict[str, Any]:
    """The test's output location: `out` in its folder, which the trainer may write."""
    return {"hostPath": str(pod_output(tmp_path))}


def test_ttl_is_enforced_after_the_operator_was_down_at_the_deadline(
    lc: ops.Namespace, own_operator: OperatorProcess, digits: tuple[Path, str], tmp_path: Path
) -> None:
    ttl = 15
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = digits_spec({"hostPath": str(empty)}, _output(tmp_path), digits[1])
    spec["runPolicy"] = {"ttlSecondsAfterFinished": ttl}
    lc.create(transferjob("brief", spec))
    lc.wait_phase("brief", "Failed", timeout=120)  # empty data: fails at once, a finished job all the same
    own_operator.stop()
    completed = dt.datetime.fromisoformat(lc.status("brief")["completionTime"].replace("Z", "+00:00"))
    time.sleep(max(0.0, completed.timestamp() + ttl + 3 - time.time()))  # the deadline passes, unseen
    assert lc.get("brief") is not None, "nothing but the operator may delete it"

    own_operator.start()
    started = time.monotonic()
    wait_for(
        lambda: lc.get("brief") is None, timeout=30, interval=0.2, what="the expired TransferJob deleted"
    )
    print(f"deleted {time.monotonic() - started:.1f}s after the operator came back (live)")
    wait_for(lambda: not lc.jobs("brief"), timeout=30, what="its Job garbage-collected")


def test_suspend_then_resume_continues_from_the_checkpoint(
    lc: ops.Namespace, own_operator: OperatorProcess, digits: tuple[Path, str], tmp_path: Path
) -> None:
    epochs = 8
    # Epochs of 1-2 s, so the suspension lands mid-run on an idle machine too.
    spec = paced_spec({"hostPath": str(digits[0])}, _output(tmp_path), digits[1], epochs)
    lc.create(transferjob("pausing", spec))
    wait_for(
        lambda: (lc.status("pausing").get("epoch") or 0) >= 1, timeout=180, interval=0.2, what="an epoch done"
    )
    lc.patch_spec("pausing", {"runPolicy": {"suspend": True}})
    suspended = lc.wait_phase("pausing", "Suspended", timeout=60)
    wait_for(lambda: not lc.pods("pausing"), timeout=60, what="the training pod gone")
    done_before = suspended["epoch"]
    assert done_before < epochs, "finished before the suspension took effect: raise the epochs"
    (job,) = lc.jobs("pausing")
    assert job["spec"]["suspend"] is True

    lc.patch_spec("pausing", {"runPolicy": {"suspend": False}})
    status = lc.wait_phase("pausing", "Succeeded", timeout=240)
    ops.assert_full_history(status, epochs)  # every epoch once: none lost, none trained twice
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Suspended"]["status"], conditions["Suspended"]["reason"]) == ("False", "Resumed")
    (pod,) = lc.pods("pausing")  # the suspended pod was deleted; this is the resumed one
    log = lc.core.read_namespaced_pod_log(pod["metadata"]["name"], lc.ns, container="trainer")
    started = [e for e in map(_event, log.splitlines()) if e and e.get("event") == "started"]
    assert started and started[0]["initialEpoch"] >= 1, started
    print(f"suspended after epoch {done_before}; resumed at initialEpoch {started[0]['initialEpoch']}")


def _event(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def test_kueue_queued_job_is_created_suspended_and_left_to_kueue(
    lc: ops.Namespace, own_operator: OperatorProcess, digits: tuple[Path, str], tmp_path: Path
) -> None:
    spec = digits_spec({"hostPath": str(digits[0])}, _output(tmp_path), digits[1], epochs=1)
    lc.create(transferjob("queued", spec, labels={QUEUE_LABEL: "team-a"}))
    status = lc.wait_phase("queued", "Suspended", timeout=60)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Suspended"]["reason"] == "Queued"
    (job,) = lc.jobs("queued")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert job["spec"]["template"]["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert lc.pods("queued") == []

    # Kueue admits the workload by unsuspending the Job; the operator must leave that alone.
    lc.batch.patch_namespaced_job(
        "queued", lc.ns, {"spec": {"suspend": False}}, _content_type="application/merge-patch+json"
    )
    status = lc.wait_phase("queued", "Succeeded", timeout=180)
    assert lc.jobs("queued")[0]["spec"]["suspend"] is False
    assert status["epoch"] == 1
    assert "JobUpdated" not in own_operator.tail(400)  # it never patched suspend back


def test_spec_changes_after_creation_are_rejected_by_the_api_server(
    lc: ops.Namespace, digits: tuple[Path, str], tmp_path: Path
) -> None:
    """The CRD's CEL transition rule, evaluated by the real kube-apiserver (no operator involved)."""
    spec = digits_spec({"hostPath": str(digits[0])}, _output(tmp_path), digits[1])
    spec["runPolicy"] = {"suspend": True}
    lc.create(transferjob("frozen", spec))
    with pytest.raises(client.ApiException) as rejected:
        lc.patch_spec("frozen", {"training": {"epochs": 7}})
    assert rejected.value.status == 422
    assert "spec is immutable except runPolicy.suspend" in str(rejected.value.body)
    lc.patch_spec("frozen", {"runPolicy": {"suspend": False, "activeDeadlineSeconds": 600}})
    stored = (lc.get("frozen") or {})["spec"]
    assert stored["runPolicy"]["suspend"] is False
    assert stored["training"]["epochs"] == 3
