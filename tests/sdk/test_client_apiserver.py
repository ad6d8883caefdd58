"""The Kubernetes backend against a real API server (tests/conftest.py's control plane, no node): what
a user sees when the namespace is missing, that events and pods follow the TransferJob's uid, so a
job created again under an old name never shows its predecessor's history, and where `tj report` finds
an output on a claim."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from transferjob import (
    BackendError,
    JobNotFoundError,
    NamespaceNotFoundError,
    TransferJob,
    TransferJobClient,
)
from transferjob.backends.kubernetes import KubernetesBackend
from transferjob.constants import API_VERSION, GROUP, KIND, LABEL_JOB_NAME, PLURAL, VERSION
from transferjob.errors import OutputUnreadableError
from transferjob.report import write_report
from transferjob_testing.cluster.kube import wait_until_served

CRD = Path("manifests/crd/transferjob.io_transferjobs.yaml")
HOLD = "transferjob.io/test-hold"  # a finalizer: keeps a deleted pod around, as a slow kubelet would


@pytest.fixture()
def backend(
    repo_root: Path, api_client: client.ApiClient, apply_yaml: Any, namespace: str
) -> KubernetesBackend:
    apply_yaml(repo_root / CRD)
    wait_until_served(api_client, GROUP, VERSION, PLURAL, namespace)
    return KubernetesBackend(namespace=namespace, api_client=api_client)


def job(name: str) -> TransferJob:
    return TransferJob.from_dict(
        {
            "metadata": {"name": name},
            "spec": {
                "data": {"source": {"pvc": {"claimName": "datasets"}}},
                "output": {"location": {"pvc": {"claimName": "models", "subPath": name}}},
            },
        }
    )


def test_a_missing_namespace_says_so(backend: KubernetesBackend, api_client: client.ApiClient) -> None:
    missing = KubernetesBackend(namespace=f"absent-{uuid.uuid4().hex[:6]}", api_client=api_client)
    for call in (lambda: missing.create(job("a")), lambda: missing.get("a"), lambda: missing.delete("a")):
        with pytest.raises(NamespaceNotFoundError, match=rf"namespace '{missing.namespace}' does not exist"):
            call()
    with pytest.raises(
        JobNotFoundError, match=f"TransferJob 'a' not found in namespace '{backend.namespace}'"
    ):
        backend.get("a")
    unserved = client.CustomObjectsApi(api_client).get_namespaced_custom_object
    for group, version, plural in (("absent.transferjob.io", "v1", "things"), ("batch", "v1", "things")):
        with pytest.raises(BackendError, match="is the CRD installed"):
            backend._call("a", unserved, group, version, backend.namespace, plural, "a")


def _event(core: Any, namespace: str, tj: TransferJob, reason: str) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    core.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": f"{tj.metadata.name}.{uuid.uuid4().hex[:8]}"},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": tj.metadata.name,
                "namespace": namespace,
                "uid": tj.metadata.uid,
            },
            "type": "Normal",
            "reason": reason,
            "message": f"{reason} of {tj.metadata.uid}",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "transferjob-test"},
        },
    )


def _training_job_and_pod(batch: Any, core: Any, namespace: str, tj: TransferJob, pod: str) -> None:
    """What the operator and the Job controller make: a Job owned by the TransferJob, a pod owned by it.
    The Job is suspended, so no controller adds pods of its own."""
    name = tj.metadata.name or ""
    labels = {LABEL_JOB_NAME: name}
    owner = {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": tj.metadata.uid}
    created = batch.create_namespaced_job(
        namespace,
        {
            "metadata": {
                "name": f"{name}-{uuid.uuid4().hex[:5]}",
                "labels": labels,
                "ownerReferences": [owner],
            },
            "spec": {
                "suspend": True,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "trainer"}]},
                },
            },
        },
    )
    job_owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": created.metadata.name,
        "uid": created.metadata.uid,
    }
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": pod, "labels": labels, "ownerReferences": [job_owner], "finalizers": [HOLD]},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "trainer"}]},
        },
    )


def test_events_and_pods_follow_the_uid_not_the_name(
    backend: KubernetesBackend, api_client: client.ApiClient, namespace: str
) -> None:
    core: Any = client.CoreV1Api(api_client)
    batch: Any = client.BatchV1Api(api_client)
    try:
        first = backend.create(job("again"))
        _event(core, namespace, first, "Created")
        _training_job_and_pod(batch, core, namespace, first, "again-first")
        assert [e.reason for e in backend.events("again")] == ["Created"]
        assert [p.metadata.name for p in backend._pods("again", first.metadata.uid or "")] == ["again-first"]

        backend.delete("again")
        with pytest.raises(JobNotFoundError):
            backend.events("again")
        second = backend.create(job("again"))
        assert second.metadata.uid != first.metadata.uid
        assert backend.events("again") == []  # the first job's event is still stored, under its uid
        _event(core, namespace, second, "Started")
        _training_job_and_pod(batch, core, namespace, second, "again-second")
        assert [e.reason for e in backend.events("again")] == ["Started"]
        assert [p.metadata.name for p in backend._pods("again", second.metadata.uid or "")] == [
            "again-second"
        ]
    finally:
        for pod in ("again-first", "again-second"):
            try:
                core.patch_namespaced_pod(pod, namespace, {"metadata": {"finalizers": None}})
            except client.ApiException as error:
                if error.status != 404:
                    raise


def test_a_report_reads_a_claims_output_where_its_volume_is_a_folder_here(
    backend: KubernetesBackend, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """`tj report` on a job whose output is a claim: bound to a hostPath volume (a one-node cluster's,
    or a node's local disk) the folder is read here; bound to anything else, or to nothing, the error
    names the claim and the volume."""
    core: Any = client.CoreV1Api(api_client)
    volumes = {
        "models": {"hostPath": {"path": str(tmp_path / "models")}},
        "shared": {"nfs": {"server": "nfs.example", "path": "/exports"}},
    }
    for claim, source in volumes.items():
        core.create_persistent_volume(
            {
                "metadata": {"name": f"{namespace}-{claim}"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "claimRef": {"namespace": namespace, "name": claim},
                    **source,
                },
            }
        )
    try:
        for claim in (*volumes, "pending"):
            bound = {"volumeName": f"{namespace}-{claim}"} if claim in volumes else {}
            spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            core.create_namespaced_persistent_volume_claim(
                namespace, {"metadata": {"name": claim}, "spec": {**spec, "storageClassName": "", **bound}}
            )
        output = tmp_path / "models" / "fe"
        output.mkdir(parents=True)
        test = {"loss": 0.2, "accuracy": 0.5, "confusionMatrix": [[1, 1], [0, 0]]}
        (output / "metrics.json").write_text(json.dumps({"classes": ["a", "b"], "test": test, "history": []}))
        backend.create(job("fe"))
        status = {"phase": "Succeeded", "model": {"uri": "/output/fe/model.keras"}}
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "fe", {"status": status}
        )
        shown = write_report(TransferJobClient(backend), "fe", tmp_path / "fe.html")
        assert [(r.folder, r.test.accuracy) for r in shown] == [(str(output), 0.5)]
        assert "records no finished epoch" in (tmp_path / "fe.html").read_text()

        assert backend.claim_folder("models") == tmp_path / "models"
        with pytest.raises(
            OutputUnreadableError, match=rf"'{namespace}-shared' \(nfs\), which is not a folder"
        ):
            backend.claim_folder("shared")
        with pytest.raises(OutputUnreadableError, match=r"'pending' in namespace .* is not bound"):
            backend.claim_folder("pending")
        with pytest.raises(OutputUnreadableError, match=r"PersistentVolumeClaim 'absent' .* does not exist"):
            backend.claim_folder("absent")
    finally:
        for claim in volumes:
            core.delete_persistent_volume(f"{namespace}-{claim}")
