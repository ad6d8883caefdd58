"""Data and models on PersistentVolumes, as on a cluster: a static PV per folder, bound to one claim.

The node is this machine, so a ``hostPath`` PersistentVolume is the simplest real volume: the pod sees
it through a PVC, exactly as it would see an NFS or CSI volume, and Pod Security "restricted" (which
forbids hostPath *in pods*) admits it. The trainer runs as UID 1000: output folders are handed to it;
data is made world-readable. A hostPath volume ignores ``fsGroup``, as real local volumes do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from transferjob_testing.cluster.kube import apply_yaml, wait_for

STORAGE_CLASS = "transferjob-test-static"
TRAINER_UID = 1000


def share_read_only(path: Path) -> None:
    """Every folder under ``path`` traversable and every file readable by any user (the trainer's UID)."""
    for dirpath, _dirs, files in os.walk(path):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)


def hand_to_trainer(path: Path) -> None:
    """A folder the trainer (UID 1000) may write: created if missing, owned by it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, TRAINER_UID, TRAINER_UID)


def static_volume(api: client.ApiClient, namespace: str, claim: str, path: Path, size: str = "1Gi") -> None:
    """A PersistentVolume for ``path`` on the node and the PVC ``claim`` in ``namespace`` bound to it.

    The PV is named after the namespace and claim (PVs are cluster-scoped) and reserved for that claim
    (``claimRef``), so no other claim can take it; its reclaim policy is Retain: deleting the namespace
    leaves the files, as a data scientist expects of their data.
    """
    pv_name = f"{namespace}-{claim}"
    pv: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {"transferjob.io/test": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": STORAGE_CLASS,
            "volumeName": pv_name,
            "resources": {"requests": {"storage": size}},
        },
    }
    apply_yaml(api, yaml.safe_dump_all([pv, pvc]), namespace)
    # A user's claims are Bound before their jobs start. Unbound, the pod waits Unschedulable ("unbound
    # immediate PersistentVolumeClaims") until the PV controller's next pass (up to its 15 s resync)
    # and the scheduler's retry, which a short pendingTimeoutSeconds does not survive on a busy node.
    core = client.CoreV1Api(api)

    def bound() -> bool:
        status = core.read_namespaced_persistent_volume_claim(claim, namespace).status
        return status is not None and status.phase == "Bound"

    wait_for(bound, timeout=60, interval=0.2, what=f"claim {namespace}/{claim} Bound")


def delete_static_volumes(api: client.ApiClient, namespace: str) -> None:
    """The PVs made for ``namespace``'s claims (the claims go with the namespace)."""
    core = client.CoreV1Api(api)
    for pv in core.list_persistent_volume(label_selector="transferjob.io/test=true").items:
        ref = pv.spec.claim_ref if pv.spec is not None else None
        if ref is not None and ref.namespace == namespace and pv.metadata and pv.metadata.name:
            core.delete_persistent_volume(pv.metadata.name)
