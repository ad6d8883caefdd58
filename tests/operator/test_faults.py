"""Faults on the real node: what an operator in production lives through, each one on purpose.

The operator SIGKILLed mid-run (three times), the training pod deleted mid-run, the API server
restarted under running jobs, a deadline and a backoff limit exceeded. Each test checks the truth
at the end (one Job with the same uid, every epoch in `.status.history` exactly once and in order,
the right failure reason), not just that something finished.

They run on the session's real cluster (tests/conftest.py's ``real_cluster``: the trainer in our image,
the real kubelet), with an operator of their own serving only their `tj-fault-*` namespaces
(authenticated as its ServiceAccount, bound to manifests/rbac/, like the e2e tests). Tests run one at a
time, so breaking that cluster (restarting its API server) disturbs no other test; the kubelet,
kube-proxy and the rest of the control plane live through the outage as they would on a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.operator import ops as ops_helpers
from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob.types import Json
from transferjob_testing.cluster.kube import apply_yaml, temporary_namespace, wait_for
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.cluster.volumes import hand_to_trainer
from transferjob_testing.harness import (
    REPO_ROOT,
    OperatorProcess,
    digits_spec,
    install,
    paced_spec,
    service_account_kubeconfig,
    transferjob,
)

pytestmark = [pytest.mark.node, pytest.mark.e2e, pytest.mark.timeout(600)]

#: The namespaces of the `fault_namespace` fixture, the only ones the module's operator serves.
PREFIX = "tj-fault"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def shared_digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The digits (readable by the trainer) and the source model as its pod sees it."""
    return ops_helpers.shared_digits(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def fault_operator(
    real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install(real_cluster.api)
    root = tmp_path_factory.mktemp("fault-operator")
    kubeconfig = service_account_kubeconfig(real_cluster.api, real_cluster.kubeconfig, root / "kubeconfig")
    port = ops_helpers.free_port()
    args = ("--metrics-port", str(port), "--trainer-image", real_cluster.trainer_image)
    process = OperatorProcess(kubeconfig, root / "operator.log", args, namespaces=(f"{PREFIX}-*",)).start()
    process.metrics = ops_helpers.Scraper(port)  # type: ignore[attr-defined]
    yield process
    process.stop()
    print(f"operator log: {process.log_path}")


class Ops:
    """Reads and writes in one namespace of the real cluster, with the operator at hand."""

    def __init__(self, cluster: RealCluster, namespace: str, operator: OperatorProcess) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.operator = operator
        self.custom: Any = client.CustomObjectsApi(cluster.api)
        self.batch: Any = client.BatchV1Api(cluster.api)
        self.core: Any = client.CoreV1Api(cluster.api)

    def create(self, body: Json) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def status(self, name: str) -> Json:
        return dict(
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name).get("status")
            or {}
        )

    def condition(self, name: str, ctype: str) -> Json | None:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == ctype and cond["status"] == "True":
                return dict(cond)
        return None

    def wait_status(self, name: str, what: str, check: Any, timeout: float = 180.0) -> Json:
        """Poll `.status` until `check(status)` holds; a final phase that is not the goal fails fast."""

        def probe() -> Json | None:
            status = self.status(name)
            return status if check(status) else None

        try:
            return wait_for(probe, timeout=timeout, interval=0.3, what=f"{name}: {what}")
        except AssertionError:
            print(self.operator.tail())
            raise

    def wait_phase(self, name: str, phase: str, timeout: float = 180.0) -> Json:
        def reached(status: Json) -> bool:
            if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
                raise AssertionError(f"{name} ended {status['phase']}: {status.get('conditions')}")
            return status.get("phase") == phase

        return self.wait_status(name, f"phase {phase}", reached, timeout)

    def jobs(self, name: str) -> list[Json]:
        listing = self.batch.list_namespaced_job(
            self.ns, label_selector=f"transferjob.io/job-name={name}", _preload_content=False
        )
        return list(json.loads(listing.data)["items"])

    def pods(self, name: str) -> list[Json]:
        listing = self.core.list_namespaced_pod(
            self.ns, label_selector=f"transferjob.io/job-name={name}", _preload_content=False
        )
        return list(json.loads(listing.data)["items"])

    def log(self, pod: str) -> str:
        return str(self.core.read_namespaced_pod_log(pod, self.ns, container="trainer"))

    def events(self, name: str, reason: str) -> list[Json]:
        listing = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name},reason={reason}", _preload_content=False
        )
        return [e for e in json.loads(listing.data)["items"] if e["involvedObject"]["kind"] == "TransferJob"]


@pytest.fixture()
def fault_namespace(real_cluster: RealCluster) -> Iterator[str]:
    with temporary_namespace(real_cluster.api, PREFIX) as name:
        yield name


@pytest.fixture()
def ops(real_cluster: RealCluster, fault_namespace: str, fault_operator: OperatorProcess) -> Ops:
    return Ops(real_cluster, fault_namespace, fault_operator)


@pytest.fixture()
def out_root(tmp_path: Path) -> Path:
    """The test's folder, handed to the trainer's UID: output hostPaths go below it."""
    hand_to_trainer(tmp_path)
    return tmp_path


def long_spec(digits: tuple[Path, str], out: Path, epochs: int, **extra: Any) -> Json:
    """Exactly `epochs` epochs of about 1-2 s each (`harness.paced_spec`): faults land mid-run."""
    data, source = digits
    return paced_spec({"hostPath": str(data)}, {"hostPath": str(out)}, source, epochs, **extra)


def epochs_of(status: Json) -> list[int]:
    return [m["epoch"] for m in status.get("history") or []]


def protocol_events(log: str) -> list[Json]:
    """The trainer's progress lines in a pod log (the protocol: one JSON object per line)."""
    events = []
    for line in log.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def assert_history_complete(status: Json, epochs: int, out: Path) -> None:
    """Every epoch once, in order, with the very metrics the trainer wrote to its output."""
    assert epochs_of(status) == list(range(1, epochs + 1))
    assert status["epoch"] == epochs
    written = json.loads((out / "metrics.json").read_text())
    by_epoch = {m["epoch"]: m for m in written["history"]}
    for metrics in status["history"]:
        # .status carries 4 significant digits (as Keras prints them); metrics.json full precision.
        assert metrics["loss"] == pytest.approx(by_epoch[metrics["epoch"]]["loss"], rel=1e-3)


# ------------------------------------------------------------------------------------------- tests


def test_operator_sigkilled_three_times_mid_run(
    ops: Ops, shared_digits: tuple[Path, str], out_root: Path
) -> None:
    """SIGKILL gives the operator no chance to clean up; each new process must adopt, not duplicate."""
    epochs = 40
    out = out_root / "out"
    # Epochs of 1-2 s: long enough that three operator restarts (a few seconds each) land mid-run,
    # not after the trainer has finished.
    spec = long_spec(shared_digits, out, epochs)
    ops.create(transferjob("killed", spec))
    last = ops.wait_status("killed", "first epoch", lambda s: s.get("epoch"), timeout=120)["epoch"]
    (job,) = ops.jobs("killed")
    uid = job["metadata"]["uid"]
    kills_at: list[int] = []
    for _ in range(3):
        status = ops.wait_status(
            "killed", f"an epoch after {last}", lambda s, e=last: (s.get("epoch") or 0) > e
        )
        assert status["phase"] == "Running" and status["epoch"] < epochs, "the kill must land mid-run"
        assert ops.operator.proc is not None
        os.kill(ops.operator.proc.pid, signal.SIGKILL)
        ops.operator.proc.wait()
        ops.operator.proc = None
        kills_at.append(status["epoch"])
        last = status["epoch"]
        assert [j["metadata"]["uid"] for j in ops.jobs("killed")] == [uid]
        ops.operator.start()

    status = ops.wait_phase("killed", "Succeeded")
    assert len(kills_at) == 3 and kills_at[-1] < epochs
    assert_history_complete(status, epochs, out)
    assert [j["metadata"]["uid"] for j in ops.jobs("killed")] == [uid]
    assert len(ops.pods("killed")) == 1, "an operator fault must not touch the training pod"
    assert len(ops.events("killed", "JobCreated")) == 1, "later processes adopted the Job, never created one"


class LogTap:
    """Follows one pod's log in a thread until the stream ends: what it printed before it was killed."""

    def __init__(self, ops: Ops, pod: str) -> None:
        self.text = ""
        self._response = ops.core.read_namespaced_pod_log(
            pod, ops.ns, container="trainer", follow=True, _preload_content=False, _request_timeout=(10, 300)
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        chunks = []
        try:
            for chunk in self._response.stream(4096, decode_content=True):
                chunks.append(chunk)
        except Exception:  # the stream ends when the pod goes away
            pass
        self.text = b"".join(chunks).decode("utf-8", "replace")

    def join(self, timeout: float) -> str:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the deleted pod's log stream did not end"
        return self.text


def test_deleted_pod_resumes_from_checkpoint(
    ops: Ops, shared_digits: tuple[Path, str], out_root: Path
) -> None:
    """The replacement pod continues after the last epoch the deleted one reported: none twice, none lost."""
    epochs = 20
    out = out_root / "out"
    ops.create(transferjob("deleted", long_spec(shared_digits, out, epochs)))
    ops.wait_status("deleted", "epoch 3 in .status", lambda s: (s.get("epoch") or 0) >= 3, timeout=120)
    (first,) = ops.pods("deleted")
    first_name = first["metadata"]["name"]
    tap = LogTap(ops, first_name)
    ops.core.delete_namespaced_pod(first_name, ops.ns)
    before = protocol_events(tap.join(60))
    reported = [e["metrics"]["epoch"] for e in before if e["event"] == "epoch"]
    assert reported == list(range(1, len(reported) + 1)) and 3 <= len(reported) < epochs
    assert before[-1]["event"] == "failed" and before[-1]["reason"] == "Interrupted"

    status = ops.wait_phase("deleted", "Succeeded")
    assert_history_complete(status, epochs, out)
    (job,) = ops.jobs("deleted")
    (second,) = [p for p in ops.pods("deleted") if p["metadata"]["name"] != first_name]
    after = protocol_events(ops.log(second["metadata"]["name"]))
    started = next(e for e in after if e["event"] == "started")
    assert started["initialEpoch"] == len(reported), "resumed exactly after the last reported epoch"
    resumed = [e["metrics"]["epoch"] for e in after if e["event"] == "epoch"]
    assert resumed == list(range(len(reported) + 1, epochs + 1))
    # A plain delete is not a disruption (no DisruptionTarget condition): the Job counts the pod as
    # failed, within backoffLimit, and the status says one pod was replaced.
    assert job["status"].get("failed") == 1
    assert status.get("restarts") == 1


def test_api_server_restart_under_running_jobs(
    ops: Ops, real_cluster: RealCluster, shared_digits: tuple[Path, str], out_root: Path
) -> None:
    """The API server goes away for a few seconds; the same operator process reconnects on its own."""
    epochs = 15
    outs = {name: out_root / name for name in ("restart-a", "restart-b")}
    for name, out in outs.items():
        ops.create(transferjob(name, long_spec(shared_digits, out, epochs, resources={"cpu": "500m"})))
    for name in outs:
        ops.wait_status(name, "epoch 2", lambda s: (s.get("epoch") or 0) >= 2, timeout=150)
    uids = {name: [j["metadata"]["uid"] for j in ops.jobs(name)] for name in outs}
    assert ops.operator.proc is not None
    pid = ops.operator.proc.pid

    real_cluster.control_plane.restart_apiserver(down_for=3.0)

    for name, out in outs.items():
        status = ops.wait_phase(name, "Succeeded", timeout=180)
        assert_history_complete(status, epochs, out)
        assert [j["metadata"]["uid"] for j in ops.jobs(name)] == uids[name]
    assert ops.operator.proc is not None and ops.operator.proc.pid == pid
    assert ops.operator.proc.poll() is None, "the operator survived the outage in the same process"
    # The outage cut both jobs' log streams (they run through the API server): each was opened again.
    reconnects = ops.operator.metrics.samples()["transferjob_operator_log_stream_reconnects_total"]  # type: ignore[attr-defined]
    assert reconnects >= len(outs)


def test_deadline_and_backoff_limit_surface_as_failed(
    ops: Ops, shared_digits: tuple[Path, str], out_root: Path
) -> None:
    """Two Job-controller verdicts, each with its own reason and a message that tells what happened."""
    slow = long_spec(shared_digits, out_root / "slow", 300, runPolicy={"activeDeadlineSeconds": 12})
    # An output location that cannot be written (an existing file where a folder should be): the real
    # trainer fails with a retryable error (exit code 1) on every attempt.
    blocked = out_root / "not-a-folder"
    blocked.write_text("in the way\n")
    data, source = shared_digits
    crashing = digits_spec({"hostPath": str(data)}, {"hostPath": str(blocked)}, source, epochs=1)
    crashing["runPolicy"] = {"backoffLimit": 1}
    ops.create(transferjob("slow", slow))
    ops.create(transferjob("crashing", crashing))

    ops.wait_phase("slow", "Failed", timeout=120)
    failed = ops.condition("slow", "Failed")
    assert failed is not None and failed["reason"] == "DeadlineExceeded", failed
    assert "deadline" in failed["message"].lower()
    wait_for(lambda: not [p for p in ops.pods("slow") if p["status"].get("phase") == "Running"], timeout=60)

    status = ops.wait_phase("crashing", "Failed", timeout=150)
    failed = ops.condition("crashing", "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded", failed
    assert failed["message"].startswith("TrainingError: "), failed
    assert "File exists" in failed["message"], "the trainer's own explanation is kept"
    (job,) = ops.jobs("crashing")
    assert job["status"]["failed"] == 2  # the first attempt and one retry (backoffLimit 1)
    assert status.get("restarts") == 1


def test_clusterwide_replicas_hand_over_through_clusterkopfpeering(
    ops: Ops, real_cluster: RealCluster, shared_digits: tuple[Path, str], out_root: Path
) -> None:
    """The Deployment's set-up: replicas serving every namespace, coordinating through the
    `ClusterKopfPeering` of manifests/operator/peering.yaml, each with the operator's own RBAC."""
    lifetime = 5
    apply_yaml(real_cluster.api, REPO_ROOT / "manifests" / "operator" / "peering.yaml")
    custom: Any = client.CustomObjectsApi(real_cluster.api)

    def peers() -> Json:
        peering = custom.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "transferjob-operator"
        )
        return dict(peering.get("status") or {})

    data, source = shared_digits

    def suspended(name: str) -> Json:
        spec = digits_spec({"hostPath": str(data)}, {"hostPath": str(out_root / name)}, source)
        spec["runPolicy"] = {"suspend": True}
        return transferjob(name, spec)

    peering = ("--peering", "transferjob-operator", "--peering-lifetime", str(lifetime), "--interval", "0.5")
    peering += ("--trainer-image", real_cluster.trainer_image)
    first = OperatorProcess(ops.operator.kubeconfig, out_root / "first.log", peering)
    second = OperatorProcess(ops.operator.kubeconfig, out_root / "second.log", peering)
    ops.operator.stop()  # the module's standalone operator would act alongside them
    try:
        first.start()
        ops_helpers.wait_log(first, "Resuming operations", timeout=30)
        second.start()
        wait_for(lambda: len(peers()) == 2, timeout=30, what="two replicas in the ClusterKopfPeering")
        ops.create(suspended("cw-first"))
        ops.wait_phase("cw-first", "Suspended", timeout=60)
        assert "cw-first: JobCreated" in ops_helpers.log_text(first)
        assert "paused by peering" in ops_helpers.log_text(second)
        assert "acting: resuming the reconciler" not in ops_helpers.log_text(second)

        ops_helpers.kill(first)
        ops_helpers.wait_log(second, "acting: resuming the reconciler", timeout=lifetime + 20)
        ops.create(suspended("cw-second"))
        ops.wait_phase("cw-second", "Suspended", timeout=60)
        assert "cw-second: JobCreated" in ops_helpers.log_text(second)
        assert "cw-first: JobCreated" not in ops_helpers.log_text(second), "adopted, not created again"
        assert len(ops.jobs("cw-first")) == 1 and len(ops.jobs("cw-second")) == 1
    finally:
        first.stop()
        second.stop()
        ops.operator.start()
        print(f"operator logs: {first.log_path} {second.log_path}")
