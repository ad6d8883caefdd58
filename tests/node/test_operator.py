"""The platform team's first hour on the real node: the operator installed from manifests/ (the
``hack/local-images`` overlay, as the README says), two replicas with peering, and TransferJobs whose
trainer runs in our image with data and models on PersistentVolumes. Container-only failures (an image
the node does not have, OOMKilled, a claim that does not exist) end up on the TransferJob with a reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.node import NODE_NAME
from transferjob_testing.cluster.real import (
    OPERATOR_NAMESPACE,
    RealCluster,
    operator_logs,
    operator_pods,
)
from transferjob_testing.cluster.volumes import hand_to_trainer, static_volume
from transferjob_testing.harness import digits_spec, transferjob

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TRAINING_TIMEOUT = 420.0


class Jobs:
    """TransferJobs in one namespace of the real cluster."""

    def __init__(self, cluster: RealCluster, namespace: str) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.custom = client.CustomObjectsApi(cluster.api)
        self.core = client.CoreV1Api(cluster.api)

    def create(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, transferjob(name, spec))

    def status(self, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return dict(obj.get("status") or {})

    def wait_phase(self, name: str, phase: str, timeout: float = TRAINING_TIMEOUT) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
                raise AssertionError(f"{name} ended {status['phase']}: {status.get('conditions')}")
            return status if status.get("phase") == phase else None

        try:
            return wait_for(reached, timeout=timeout, interval=1.0, what=f"{name} to be {phase}")
        except AssertionError:
            print(self.cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout)
            print(operator_logs(self.cluster))
            raise

    def condition(self, name: str, ctype: str, timeout: float = 120.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for cond in self.status(name).get("conditions") or []:
                if cond["type"] == ctype and cond["status"] == "True":
                    return dict(cond)
            return None

        try:
            return wait_for(found, timeout=timeout, interval=0.5, what=f"{name} condition {ctype}")
        except AssertionError:
            print(self.status(name))
            print(operator_logs(self.cluster))
            raise

    def pods(self, name: str) -> list[Any]:
        selector = f"transferjob.io/job-name={name}"
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)


@pytest.fixture()
def jobs(in_cluster_operator: RealCluster, real_namespace: str) -> Jobs:
    return Jobs(in_cluster_operator, real_namespace)


def test_operator_runs_in_cluster_from_the_manifests(in_cluster_operator: RealCluster) -> None:
    """Two replicas of our operator image, Ready through their probes, with the ServiceAccount's token."""
    pods = operator_pods(in_cluster_operator)
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name == NODE_NAME
        assert pod.spec.containers[0].image == "localhost/transferjob/operator:dev"
        assert pod.spec.service_account_name == "transferjob-operator"
        assert all(c.ready for c in pod.status.container_statuses)
    # kopf peering: both replicas announce themselves in the ClusterKopfPeering.
    peering = client.CustomObjectsApi(in_cluster_operator.api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", "transferjob-operator"
    )
    assert len(peering.get("status") or {}) == 2, peering.get("status")


def _small_spec(claim: str = "datasets", **extra: Any) -> dict[str, Any]:
    return digits_spec(
        {"pvc": {"claimName": claim, "subPath": "digits-5-9"}},
        {"pvc": {"claimName": "models", "subPath": "out"}},
        "/data/source.keras",
        epochs=1,
        **extra,
    )


def test_an_image_the_node_lacks_fails_with_the_pull_reason(
    jobs: Jobs, quickstart_datasets: Path, tmp_path: Path
) -> None:
    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "datasets", quickstart_datasets)
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")
    jobs.create(
        "no-image",
        _small_spec(
            resources={"image": "localhost/transferjob/not-built:1", "imagePullPolicy": "Never", "gpus": 1},
            runPolicy={"pendingTimeoutSeconds": 20},
        ),
    )
    cond = jobs.condition("no-image", "ImagePullFailed")
    assert cond["reason"] == "ErrImageNeverPull"
    assert "localhost/transferjob/not-built:1" in cond["message"]
    failed = jobs.wait_phase("no-image", "Failed", timeout=120)
    assert any(c["reason"] == "PendingTimeout" for c in failed["conditions"] if c["status"] == "True")


def test_oom_killed_trainer_fails_with_advice(jobs: Jobs, quickstart_datasets: Path, tmp_path: Path) -> None:
    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "datasets", quickstart_datasets)
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")
    jobs.create(
        "tiny-memory",
        _small_spec(resources={"memory": "160Mi", "cpu": "500m", "gpus": 1}, runPolicy={"backoffLimit": 0}),
    )
    failed = jobs.wait_phase("tiny-memory", "Failed", timeout=180)
    reasons = {c["reason"] for c in failed["conditions"] if c["status"] == "True"}
    assert "OOMKilled" in reasons, failed["conditions"]
    message = next(c["message"] for c in failed["conditions"] if c["reason"] == "OOMKilled")
    assert "spec.resources.memory" in message


def test_a_missing_claim_is_named_on_the_transferjob(jobs: Jobs, tmp_path: Path) -> None:
    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")
    jobs.create("no-claim", _small_spec(claim="no-such-claim", resources={"gpus": 1}))
    cond = jobs.condition("no-claim", "Unschedulable", timeout=90)
    assert "no-such-claim" in cond["message"], cond


def test_the_standby_replica_takes_over_when_the_active_one_dies(
    jobs: Jobs, quickstart_datasets: Path, tmp_path: Path
) -> None:
    """Delete the operator pod that acts; the stand-by takes over and finishes the job it did not start."""
    core = client.CoreV1Api(jobs.cluster.api)
    peering = client.CustomObjectsApi(jobs.cluster.api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", "transferjob-operator"
    )
    # The highest priority acts; kopf's peer ids are "<POD_ID>" prefixes of the status keys.
    status = peering.get("status") or {}
    active_id = max(status, key=lambda k: status[k].get("priority", 0))
    active = next(p for p in operator_pods(jobs.cluster) if p.metadata.name in active_id)
    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "datasets", quickstart_datasets)
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")
    jobs.create("takeover", _small_spec(resources={"gpus": 1}, training={"epochs": 2}))
    jobs.condition("takeover", "Running", timeout=180)
    core.delete_namespaced_pod(active.metadata.name, OPERATOR_NAMESPACE, grace_period_seconds=0)
    started = time.monotonic()
    # Still running when its operator went away: whoever writes Succeeded is another replica.
    assert jobs.status("takeover")["phase"] == "Running"
    done = jobs.wait_phase("takeover", "Succeeded")
    assert done["test"]["accuracy"] > 0.3
    print(f"finished {time.monotonic() - started:.1f}s after the active replica was deleted")
