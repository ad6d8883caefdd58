"""`model.fromJob`: may this TransferJob start, and from which model? Pure, no I/O.

A fine-tuning job that builds on another one waits while that one is Pending or Running (condition
WaitingForJob), fails when it failed (UpstreamFailed) or succeeded without a model (UpstreamHasNoModel),
and fails when it does not exist `timeout` seconds after this job was created (UpstreamNotFound), since a
typo in `fromJob` would otherwise wait forever.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError

from transferjob.models import Location, Phase, TransferJob
from transferjob_operator.jobs import UpstreamModel, output_dir, upstream_model
from transferjob_operator.status import Gate

#: How long a `fromJob` that names no existing TransferJob waits before failing.
DEFAULT_UPSTREAM_TIMEOUT = 600.0


def _failure(upstream: dict[str, Any]) -> str:
    for cond in upstream.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
    return "Failed"


def upstream_gate(
    tj: TransferJob,
    upstream: dict[str, Any] | None,
    now: dt.datetime,
    timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
) -> Gate | UpstreamModel | None:
    """A Gate that holds the job back, the model to start from, or None when there is no `fromJob`."""
    source = tj.spec.model.from_job
    if source is None:
        return None
    if upstream is None:
        created = tj.metadata.creation_timestamp or now
        waited = (now - created).total_seconds()
        if waited >= timeout:
            return Gate(
                Phase.FAILED,
                "Failed",
                "UpstreamNotFound",
                f"model.fromJob: TransferJob {source} does not exist (waited {int(waited)}s)",
            )
        return Gate(
            Phase.PENDING,
            "WaitingForJob",
            "UpstreamNotFound",
            f"waiting for TransferJob {source} to be created (gives up after {int(timeout)}s)",
        )
    status = upstream.get("status") or {}
    phase = status.get("phase") or Phase.PENDING.value
    if phase == Phase.FAILED.value:
        return Gate(
            Phase.FAILED, "Failed", "UpstreamFailed", f"TransferJob {source} failed: {_failure(upstream)}"
        )
    if phase != Phase.SUCCEEDED.value:
        return Gate(
            Phase.PENDING, "WaitingForJob", "WaitingForJob", f"waiting for TransferJob {source} ({phase})"
        )
    uri = (status.get("model") or {}).get("uri")
    try:
        location = Location.model_validate(upstream["spec"]["output"]["location"])
    except (KeyError, ValidationError):
        location = None
    if not uri or location is None:
        return Gate(
            Phase.FAILED,
            "Failed",
            "UpstreamHasNoModel",
            f"TransferJob {source} succeeded but reports no exported model in .status.model.uri",
        )
    return upstream_model(location, uri, output_dir(location))
