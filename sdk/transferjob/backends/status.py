"""Progress events -> `TransferJobStatus`, for jobs that no operator watches (the local backend).

The local runner feeds every protocol line the trainer prints through `apply_event`, so a local job's
`status.json` holds the same `TransferJobStatus` the operator writes on the cluster, and everything
built on status (wait, watch, plot, `tj get`) works unchanged for local jobs. Pure functions: the
runner owns the file and the clock.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from transferjob.constants import HISTORY_LIMIT
from transferjob.models import Condition, EpochMetrics, Phase, TransferJobStatus
from transferjob.progress import EpochEnded, Failed, Finished, PhaseChanged, Started

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


def set_condition(
    status: TransferJobStatus, type_: str, value: bool, reason: str, message: str, now: dt.datetime
) -> None:
    """Set one condition (one per type), keeping its transition time when its value did not change."""
    text: Literal["True", "False"] = "True" if value else "False"
    for condition in status.conditions:
        if condition.type == type_:
            if condition.status != text:
                condition.last_transition_time = now
            condition.status = text
            condition.reason, condition.message = reason, message
            return
    status.conditions.append(
        Condition(type=type_, status=text, reason=reason, message=message, last_transition_time=now)
    )


def merge_history(history: list[EpochMetrics], metrics: EpochMetrics) -> list[EpochMetrics]:
    """History with `metrics` appended; a resumed or retried run that repeats epochs replaces them."""
    kept = [m for m in history if m.epoch < metrics.epoch]
    return [*kept, metrics][-HISTORY_LIMIT:]


def apply_event(
    status: TransferJobStatus,
    event: Started | PhaseChanged | EpochEnded | Finished | Failed,
    now: dt.datetime,
) -> TransferJobStatus:
    """The status after one progress event (a new object; `status` is left as it was)."""
    new = status.model_copy(deep=True)
    if isinstance(event, Started):
        new.phase = Phase.RUNNING
        new.start_time = new.start_time or now
        new.epochs = event.epochs
        set_condition(new, "Running", True, "TrainerStarted", f"training {event.mode} on {event.base}", now)
    elif isinstance(event, PhaseChanged):
        new.phase = Phase.RUNNING
        set_condition(new, "Running", True, event.phase.capitalize(), event.message or event.phase, now)
    elif isinstance(event, EpochEnded):
        new.phase = Phase.RUNNING
        new.epoch = event.metrics.epoch
        new.epochs = event.epochs
        new.metrics = event.metrics
        new.history = merge_history(new.history, event.metrics)
    elif isinstance(event, Finished):
        new.phase = Phase.SUCCEEDED
        new.completion_time = now
        new.epoch = event.epochs_run
        new.best_epoch = event.best_epoch
        new.test = event.test
        new.model = event.model
        if event.history:
            new.history = event.history[-HISTORY_LIMIT:]
            new.metrics = event.history[-1]
        set_condition(new, "Running", False, "Finished", "training finished", now)
        set_condition(new, "Succeeded", True, "Succeeded", f"test accuracy {event.test.accuracy:.4f}", now)
    else:
        new.phase = Phase.FAILED
        new.completion_time = now
        set_condition(new, "Running", False, event.reason, event.message, now)
        set_condition(new, "Failed", True, event.reason, event.message, now)
    return new


def failure(status: TransferJobStatus) -> tuple[str, str]:
    """The reason and message of a failed job: its Failed condition, or its last true one."""
    for condition in status.conditions:
        if condition.type == "Failed" and condition.status == "True":
            return condition.reason or "Failed", condition.message
    true = [c for c in status.conditions if c.status == "True" and c.reason]
    if true:
        return true[-1].reason, true[-1].message
    return "Failed", ""
