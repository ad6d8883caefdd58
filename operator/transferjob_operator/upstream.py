"""`model.fromJob`: may this TransferJob start, and from which model? Pure, no I/O.

A fine-tuning job that builds on another one waits while that one is Pending or Running (condition
WaitingForJob), fails when it failed (UpstreamFailed) or succeeded without a model (UpstreamHasNoModel),
and fails when it does not exist `timeout` seconds after this job was created (UpstreamNotFound), since a
typo in `fromJob` would otherwise wait forever. Jobs whose `fromJob`s lead back to themselves (a job
naming itself, two naming each other, a longer loop) would wait for each other forever: each member of
such a loop fails at once (FromJobCycle).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from transferjob.errors import SpecError
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


def _from_job(body: Mapping[str, Any] | None) -> str | None:
    source = ((body or {}).get("spec") or {}).get("model", {}).get("fromJob")
    return str(source) if source else None


def _succeeded(body: Mapping[str, Any]) -> bool:
    return (body.get("status") or {}).get("phase") == Phase.SUCCEEDED.value


def from_job_cycle(
    key: tuple[str | None, str], store: Mapping[tuple[str | None, str], Any]
) -> list[str] | None:
    """The loop of `fromJob`s this TransferJob is part of, starting and ending at it; None if none.

    Follows `fromJob` through the stored TransferJobs of its namespace. The chain ends (no cycle for
    this job) at a job without `fromJob`, a missing one, or one that succeeded: its model exists, so
    nothing before it waits. A member that already failed (the first of a loop to notice) still
    belongs to the loop, so the others fail with FromJobCycle too, not with UpstreamFailed. A job
    that only leads *into* a loop (a -> b -> c -> b) is not a member: it fails with UpstreamFailed
    once its upstream fails with FromJobCycle.
    """
    namespace, name = key
    chain = [name]
    current = _from_job(store.get(key))
    while current is not None:
        if current == name:
            return [*chain, name]
        upstream = store.get((namespace, current))
        if upstream is None or _succeeded(upstream) or current in chain:
            return None
        chain.append(current)
        current = _from_job(upstream)
    return None


def cycle_gate(cycle: list[str]) -> Gate:
    """Failed/FromJobCycle, naming the loop from this job's point of view."""
    loop = " -> ".join(cycle)
    return Gate(
        Phase.FAILED,
        "Failed",
        "FromJobCycle",
        f"model.fromJob forms a cycle: {loop}; no job in it can ever start: delete these TransferJobs "
        "and create them again with a chain of fromJob that starts at a job without fromJob",
    )


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
    except (KeyError, SpecError):
        location = None
    if not uri or location is None:
        return Gate(
            Phase.FAILED,
            "Failed",
            "UpstreamHasNoModel",
            f"TransferJob {source} succeeded but reports no exported model in .status.model.uri",
        )
    return upstream_model(location, uri, output_dir(location))
