"""The operator end to end on the real node: the trainer runs in our image on the 32x32 digits.

The cluster (our control plane, containerd, the kubelet, kube-proxy, fake GPUs) comes from
tests/conftest.py's ``real_cluster``; the operator runs as a subprocess with its ServiceAccount's RBAC
(so that a test can restart it and read its log); pods run our trainer image (``--trainer-image``).
Data folders are hostPath volumes holding the source model too (the pod sees it as `POD_BASE`); output
folders belong to the trainer's UID.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.cluster.volumes import (
    hand_to_trainer,
    static_volume,
)
from transferjob_testing.harness import (
    POD_BASE,
    OperatorProcess,
    digits_spec,
    features_then_finetune,
    make_digits,
    pod_data,
    pod_output,
    serving_operator,
    transferjob,
)

pytestmark = [pytest.mark.node, pytest.mark.e2e, pytest.mark.timeout(900)]

TRAINING_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data, source = make_digits(tmp_path_factory.mktemp("digits"))
    return pod_data(data, source), source


@pytest.fixture(scope="module")
def operator(
    real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    root = tmp_path_factory.mktemp("operator")
    # Only the namespaces of the `namespace` fixture: other test modules run operators of their own.
    args = ("--from-job-timeout", "120", "--trainer-image", real_cluster.trainer_image)
    with serving_operator(
        real_cluster.api, real_cluster.kubeconfig, root, args, namespaces=("tj-test-*",)
    ) as process:
        yield process


class Cluster:
    """What the tests read and write, in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str, operator: OperatorProcess) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.operator = operator

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == ctype and cond["status"] == "True":
                return dict(cond)
        return None

    def wait_phase(self, name: str, phase: str, timeout: float = TRAINING_TIMEOUT) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
                raise AssertionError(f"{name} ended {status['phase']}: {status.get('conditions')}")
            return status if status.get("phase") == phase else None

        try:
            return wait_for(reached, timeout=timeout, interval=0.5, what=f"{name} to be {phase}")
        except AssertionError:
            print(self.operator.tail())
            raise

    def statuses_until(
        self, name: str, phase: str, timeout: float = TRAINING_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Every distinct status seen while polling until `phase` (the last one is that phase)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(name)
            if not seen or status != seen[-1]:
                seen.append(status)
            if status.get("phase") == phase:
                return seen
            assert status.get("phase") not in ("Succeeded", "Failed"), status.get("conditions")
            time.sleep(0.2)
        print(self.operator.tail())
        raise AssertionError(f"{name} not {phase} after {timeout}s: {seen[-1] if seen else None}")

    def jobs(self, name: str) -> list[dict[str, Any]]:
        items = self.batch.list_namespaced_job(
            self.ns, label_selector=f"transferjob.io/job-name={name}"
        ).items
        return [client.ApiClient().sanitize_for_serialization(j) for j in items]

    def pods(self, name: str) -> list[Any]:
        return list(
            self.core.list_namespaced_pod(self.ns, label_selector=f"transferjob.io/job-name={name}").items
        )

    def event_reasons(self, name: str) -> set[str]:
        events = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return {e.reason for e in events if e.involved_object.kind == "TransferJob"}


@pytest.fixture()
def cluster(real_api: client.ApiClient, node_namespace: str, operator: OperatorProcess) -> Cluster:
    return Cluster(real_api, node_namespace, operator)


def _history_ok(status: dict[str, Any], epochs: int) -> None:
    history = status["history"]
    assert [m["epoch"] for m in history] == list(range(1, len(history) + 1))
    assert 1 <= len(history) <= epochs
    for metrics in history:
        assert {"loss", "accuracy", "valLoss", "valAccuracy"} <= set(metrics)
    assert status["epoch"] == len(history)
    assert status["epochs"] == epochs
    assert 1 <= status["bestEpoch"] <= len(history)
    assert 0.0 <= status["test"]["accuracy"] <= 1.0
    assert status["model"]["uri"].endswith("model.keras")


def test_feature_extraction_then_fine_tuning_from_job(
    cluster: Cluster, digits: tuple[Path, Path], tmp_path: Path, real_kubectl: Callable[..., Any]
) -> None:
    data, _ = digits
    out = tmp_path / "models"
    hand_to_trainer(
        out
    )  # an output hostPath's parent must exist; the trainer creates features/ and finetune/
    fe, ft = features_then_finetune(data, out, POD_BASE, epochs=3)
    # The fine-tuning job is submitted first: it must wait for the job it builds on.
    cluster.create(transferjob("finetune", ft))
    cluster.create(transferjob("features", fe))
    waiting = wait_for(
        lambda: cluster.condition("finetune", "WaitingForJob"), timeout=30, what="WaitingForJob"
    )
    assert "features" in waiting["message"]
    assert cluster.status("finetune")["phase"] == "Pending"
    assert cluster.jobs("finetune") == []

    # A restart while the first job runs changes nothing: same Job, status picks up where it was.
    cluster.wait_phase("features", "Running", timeout=120)
    cluster.operator.restart()

    status = cluster.wait_phase("features", "Succeeded")
    _history_ok(status, 3)
    assert status["jobName"] == "features"
    assert status["observedGeneration"] == 1
    assert status["startTime"] and status["completionTime"]
    succeeded = cluster.condition("features", "Succeeded")
    assert succeeded is not None and "test accuracy" in succeeded["message"]
    assert len(cluster.jobs("features")) == 1

    waited = real_kubectl(
        "wait", "-n", cluster.ns, "--for=condition=Succeeded", "tj/features", "--timeout=30s"
    )
    assert "condition met" in waited.stdout

    table = real_kubectl("get", "tj", "features", "-n", cluster.ns, "--no-headers").stdout.split()
    # NAME PHASE MODE MODEL EPOCH VAL-ACC TEST-ACC AGE
    assert table[:3] == ["features", "Succeeded", "FeatureExtraction"]
    assert table[4] == "3"
    assert 0.0 <= float(table[5]) <= 1.0 and float(table[6]) == pytest.approx(
        status["test"]["accuracy"], abs=1e-3
    )

    # Epochs reach .status while the pod still runs (from its log), not only at the end.
    seen = cluster.statuses_until("finetune", "Succeeded")
    live = [s for s in seen if s.get("phase") == "Running" and s.get("epoch") and "test" not in s]
    assert live, [(s.get("phase"), s.get("epoch")) for s in seen]
    assert live[0]["metrics"]["epoch"] == live[0]["epoch"] == live[0]["history"][-1]["epoch"]
    ft_status = seen[-1]
    _history_ok(ft_status, 3)
    (job,) = cluster.jobs("finetune")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--init-model") + 1] == "/init/model.keras"
    conds = {c["type"]: c for c in ft_status["conditions"]}
    assert conds["WaitingForJob"]["status"] == "False"
    assert {"JobCreated", "Succeeded"} <= cluster.event_reasons("features")
    assert {"WaitingForJob", "JobCreated", "Succeeded"} <= cluster.event_reasons("finetune")

    # Deleting a TransferJob deletes its Job and pods (ownerReferences + garbage collector); the spec
    # travels in the pod template, so no ConfigMap is left behind either.
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "features")
    wait_for(lambda: not cluster.jobs("features") and not cluster.pods("features"), timeout=60, what="GC")
    with pytest.raises(client.ApiException) as gone:
        cluster.core.read_namespaced_config_map("features-spec", cluster.ns)
    assert gone.value.status == 404


def test_bad_data_fails_once_with_invalid_data(
    cluster: Cluster, digits: tuple[Path, Path], tmp_path: Path
) -> None:
    data = tmp_path / "broken"
    for split in ("train", "val", "test"):
        (data / split / "only-one-class").mkdir(parents=True)
    shutil.copy(next((digits[0] / "train" / "5").iterdir()), data / "train" / "only-one-class")
    pod_data(data, digits[1])
    spec = digits_spec({"hostPath": str(data)}, {"hostPath": str(pod_output(tmp_path))}, POD_BASE)
    spec["runPolicy"] = {"backoffLimit": 3}
    cluster.create(transferjob("broken", spec))
    status = cluster.wait_phase("broken", "Failed", timeout=120)
    failed = cluster.condition("broken", "Failed")
    assert failed is not None
    assert failed["reason"] == "InvalidData"
    assert "needs at least 2 class sub-folders" in failed["message"]  # the trainer's words, as locally
    (job,) = cluster.jobs("broken")
    job_failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert "exit code 42" in job_failed[0]["message"]  # pod and exit code: on the Job
    assert job["status"]["failed"] == 1  # the podFailurePolicy failed the Job at once: no retries
    assert len(cluster.pods("broken")) == 1
    assert status.get("restarts") is None
    assert "InvalidData" in cluster.event_reasons("broken")


def test_unschedulable_gpu_request_says_so(
    cluster: Cluster, digits: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = digits_spec({"hostPath": str(digits[0])}, {"hostPath": str(pod_output(tmp_path))}, POD_BASE)
    spec["resources"]["gpus"] = 8  # the real node has 4 (fake, TEST-ONLY)
    cluster.create(transferjob("greedy", spec))
    unschedulable = wait_for(
        lambda: cluster.condition("greedy", "Unschedulable"), timeout=60, what="Unschedulable"
    )
    assert "nvidia.com/gpu" in unschedulable["message"]
    assert cluster.status("greedy")["phase"] == "Pending"
    wait_for(
        lambda: "Unschedulable" in cluster.event_reasons("greedy"), timeout=10, what="an Unschedulable event"
    )


def test_restricted_namespace_admits_training_pods(
    cluster: Cluster, digits: tuple[Path, Path], tmp_path: Path
) -> None:
    """Pod Security "restricted" forbids hostPath in pods: data and output come from PVCs."""
    cluster.core.patch_namespace(
        cluster.ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    static_volume(cluster.core.api_client, cluster.ns, "datasets", digits[0])
    hand_to_trainer(tmp_path / "models")
    static_volume(cluster.core.api_client, cluster.ns, "models", tmp_path / "models")
    spec = digits_spec(
        {"pvc": {"claimName": "datasets"}},
        {"pvc": {"claimName": "models", "subPath": "run"}},
        POD_BASE,
        epochs=1,
    )
    cluster.create(transferjob("restricted", spec))
    status = cluster.wait_phase("restricted", "Succeeded")
    assert status["model"]["uri"].endswith("run/model.keras")
    (job,) = cluster.jobs("restricted")
    events = cluster.core.list_namespaced_event(cluster.ns, field_selector="involvedObject.kind=Job").items
    assert not [e for e in events if e.reason == "FailedCreate"], [e.message for e in events]
    assert job["status"]["succeeded"] == 1


def test_suspend_and_resume(cluster: Cluster, digits: tuple[Path, Path], tmp_path: Path) -> None:
    spec = digits_spec({"hostPath": str(digits[0])}, {"hostPath": str(pod_output(tmp_path))}, POD_BASE)
    spec["runPolicy"] = {"suspend": True}
    cluster.create(transferjob("later", spec))
    cluster.wait_phase("later", "Suspended", timeout=60)
    assert cluster.pods("later") == []
    # No finalizer: the operator needs none, so a TransferJob can be deleted while no operator runs.
    assert not cluster.get("later")["metadata"].get("finalizers")
    (job,) = cluster.jobs("later")
    assert job["spec"]["suspend"] is True
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.ns, PLURAL, "later", {"spec": {"runPolicy": {"suspend": False}}}
    )
    wait_for(lambda: cluster.jobs("later")[0]["spec"]["suspend"] is False, timeout=30, what="the Job resumed")
    wait_for(
        # A fast machine may train the three epochs before this looks: finished counts as resumed too.
        lambda: cluster.status("later").get("phase") in ("Pending", "Running", "Succeeded"),
        timeout=30,
        what="resumed",
    )
    resumed = {c["type"]: c for c in cluster.status("later")["conditions"]}["Suspended"]
    assert (resumed["status"], resumed["reason"]) == ("False", "Resumed")


def test_ttl_deletes_the_finished_transferjob(
    cluster: Cluster, tmp_path: Path, digits: tuple[Path, Path]
) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    spec = digits_spec(
        {"hostPath": str(pod_data(data, digits[1]))}, {"hostPath": str(pod_output(tmp_path))}, POD_BASE
    )
    spec["runPolicy"] = {"ttlSecondsAfterFinished": 2}
    cluster.create(transferjob("shortlived", spec))
    cluster.wait_phase("shortlived", "Failed", timeout=120)

    def gone() -> bool:
        try:
            cluster.get("shortlived")
            return False
        except client.ApiException as error:
            return error.status == 404

    wait_for(gone, timeout=30, what="the TransferJob deleted by its TTL")
    wait_for(lambda: not cluster.jobs("shortlived"), timeout=30, what="its Job garbage-collected")
