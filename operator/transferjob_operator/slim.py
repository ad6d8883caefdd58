"""Slim copies: the few fields of Jobs, pods and TransferJobs that the operator reads, nothing else.

The operator keeps every training Job and pod (kopf's indexes) and every TransferJob (the reconciler's
store) in memory for as long as it runs. A whole object carries what it never reads (pod templates,
`managedFields`, a finished job's metrics history), so each is copied down to what `status`,
`upstream` and the reconciler read: about 1/20 of a Job. Pure functions; the copies share nothing
with the objects they come from (kopf may reuse those).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from transferjob.types import Json

_META_FIELDS = (
    "name",
    "uid",
    "resourceVersion",
    "ownerReferences",
    "creationTimestamp",
    "deletionTimestamp",
)
_TJ_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "labels")
#: What the store keeps of `.status` for every TransferJob: what `fromJob` gates and TTLs read.
_TJ_STATUS = ("phase", "conditions", "model", "completionTime")


def fingerprint(obj: Json | None) -> tuple[str | None, str | None]:
    """uid and resourceVersion: equal fingerprints, the same object in the same version."""
    meta = (obj or {}).get("metadata", {})
    return meta.get("uid"), meta.get("resourceVersion")


def _slim_meta(body: Mapping[str, Any]) -> Json:
    meta = body.get("metadata", {})
    return {k: copy.deepcopy(meta[k]) for k in _META_FIELDS if k in meta}


def slim_job(body: Mapping[str, Any]) -> Json:
    """What the status logic reads of a Job: no pod template, no managedFields (~1/20 of the object)."""
    spec = body.get("spec", {})
    return {
        "metadata": _slim_meta(body),
        "spec": {k: spec[k] for k in ("suspend", "activeDeadlineSeconds") if k in spec},
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


#: The Job controller's label of an Indexed Job's pod: its index (the worker's, in a group).
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def slim_pod(body: Mapping[str, Any]) -> Json:
    """What the status logic reads of a pod: phase, conditions, the containers' states and images, and
    a worker's index (its only label kept)."""
    status_ = body.get("status") or {}
    containers = body.get("spec", {}).get("containers") or []
    meta = _slim_meta(body)
    index = (body.get("metadata", {}).get("labels") or {}).get(COMPLETION_INDEX_LABEL)
    if index is not None:
        meta["labels"] = {COMPLETION_INDEX_LABEL: index}
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": c.get("name"), "image": c.get("image")} for c in containers]},
        "status": {
            k: copy.deepcopy(status_[k]) for k in ("phase", "conditions", "containerStatuses") if k in status_
        },
    }


def slim_transferjob_status(status_: Mapping[str, Any]) -> Json:
    """The fields of a TransferJob's `.status` that `fromJob` gates and TTLs read."""
    return {k: copy.deepcopy(status_[k]) for k in _TJ_STATUS if k in status_}


def slim_transferjob(body: Mapping[str, Any]) -> Json:
    """What the reconciler reads of a TransferJob: spec, labels, and the status fields gates read.

    No `managedFields`, annotations or metrics history: a finished job's copy stays small however long
    it trained (a supervised job's full last status lives in the reconciler's `JobState`).
    """
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: copy.deepcopy(meta[k]) for k in _TJ_META if k in meta},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": slim_transferjob_status(body.get("status") or {}),
    }
