"""The indexes keep slim copies of Jobs and pods, the store of TransferJobs: the readers see the same."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.operator.conftest import cond, make_job, make_pod, make_tj, terminated
from transferjob.progress import Failed, termination_message
from transferjob.status import Progress
from transferjob.types import Json
from transferjob_operator.jobs import build_job
from transferjob_operator.slim import slim_job, slim_pod, slim_transferjob
from transferjob_operator.status import status_from_job_and_pods

NOW = dt.datetime(2025, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
MANAGED = [{"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}}]


def _full_job(**status: Any) -> Json:
    """A Job as the API server returns it: the whole pod template, managedFields, ..."""
    job = build_job(make_tj())
    job["metadata"].update(uid="job-uid", resourceVersion="42", managedFields=MANAGED)
    job["spec"]["suspend"] = False
    job["status"] = make_job(**status)["status"]
    return job


def _full_pod(**kwargs: Any) -> Json:
    pod = make_pod(**kwargs)
    pod["metadata"].update(
        uid="pod-uid", resourceVersion="7", managedFields=MANAGED, ownerReferences=[{"uid": "job-uid"}]
    )
    pod["spec"].update(volumes=[{"name": "scratch", "emptyDir": {}}], nodeName="node-1")
    pod["status"]["hostIP"] = "127.0.0.1"
    return pod


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no"}
failed = termination_message(Failed(reason="InvalidData", message="one class only", permanent=True))


@pytest.mark.parametrize(
    ("job", "pods"),
    [
        (_full_job(), []),
        (_full_job(), [_full_pod(phase="Running", state={"running": {}})]),
        (_full_job(), [_full_pod(conditions=[UNSCHEDULABLE])]),
        (_full_job(), [_full_pod(state={"waiting": {"reason": "ImagePullBackOff", "message": "nope"}})]),
        (
            _full_job(conditions=[cond("Failed", "PodFailurePolicy")], failed=1),
            [_full_pod(phase="Failed", state=terminated(2, failed))],
        ),
        (_full_job(conditions=[cond("Complete")], completionTime="2025-01-01T00:09:30Z"), []),
    ],
)
def test_slim_copies_give_the_same_status(job: Json, pods: list[Json]) -> None:
    tj = make_tj()
    full = status_from_job_and_pods(tj, job, pods, Progress(), NOW)
    slim = status_from_job_and_pods(tj, slim_job(job), [slim_pod(p) for p in pods], Progress(), NOW)
    assert slim == full


def test_slim_copies_drop_templates_and_managed_fields() -> None:
    job, pod = slim_job(_full_job()), slim_pod(_full_pod())
    assert "template" not in job["spec"] and "managedFields" not in job["metadata"]
    assert job["metadata"]["resourceVersion"] == "42"
    assert "managedFields" not in pod["metadata"] and "volumes" not in pod["spec"]
    assert pod["metadata"]["ownerReferences"] == [{"uid": "job-uid"}]


def test_slim_transferjob_drops_managed_fields_and_history() -> None:
    body = make_tj().to_dict()
    body["metadata"]["managedFields"] = MANAGED
    body["status"] = {
        "phase": "Succeeded",
        "history": [{"epoch": i, "loss": 0.1} for i in range(1, 101)],
        "model": {"uri": "pvc://models/a/model.keras"},
    }
    slim = slim_transferjob(body)
    assert "managedFields" not in slim["metadata"]
    assert slim["status"] == {"phase": "Succeeded", "model": {"uri": "pvc://models/a/model.keras"}}
    assert slim["spec"] == body["spec"] and slim["spec"] is not body["spec"]
