"""Builders for the operator's unit tests: TransferJobs, Jobs and pods as the API server returns them."""

from __future__ import annotations

from typing import Any

import pytest

from transferjob.models import TransferJob
from transferjob.types import Json


def make_tj(spec: Json | None = None, **metadata: Any) -> TransferJob:
    """A stored TransferJob: defaults applied, uid and generation set."""
    body: Json = {
        "apiVersion": "transferjob.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {
            "name": "digits",
            "namespace": "ml",
            "uid": "uid-1",
            "generation": 1,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            **metadata,
        },
        "spec": spec
        or {
            "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "digits"}}},
            "output": {"location": {"pvc": {"claimName": "models", "subPath": "digits-fe"}}},
        },
    }
    return TransferJob.from_dict(body)


def make_job(conditions: list[Json] | None = None, suspend: bool = False, **status: Any) -> Json:
    return {
        "metadata": {"name": "digits", "namespace": "ml", "uid": "job-uid"},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or [], **status},
    }


def cond(ctype: str, reason: str = "", message: str = "", when: str = "2025-01-01T00:10:00Z") -> Json:
    return {"type": ctype, "status": "True", "reason": reason, "message": message, "lastTransitionTime": when}


def make_pod(
    name: str = "digits-abc",
    phase: str = "Pending",
    created: str = "2025-01-01T00:00:01Z",
    state: Json | None = None,
    conditions: list[Json] | None = None,
) -> Json:
    statuses = [{"name": "trainer", "state": state}] if state is not None else []
    return {
        "metadata": {"name": name, "namespace": "ml", "creationTimestamp": created},
        "spec": {"containers": [{"name": "trainer", "image": "ghcr.io/transferjob/trainer:0.1.0"}]},
        "status": {"phase": phase, "conditions": conditions or [], "containerStatuses": statuses},
    }


def terminated(exit_code: int, message: str = "", reason: str = "Error") -> Json:
    return {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "message": message,
            "finishedAt": "2025-01-01T00:09:00Z",
        }
    }


@pytest.fixture()
def tj() -> TransferJob:
    return make_tj()
