"""Progress events -> `TransferJobStatus`: the one status function the operator and the local backend share.

Pure, no I/O: the callers own the clock, the files and the API.

Two parties know something about a job. The trainer's events (`transferjob.progress`) say what it
did: epochs and their metrics, its current step, the test result and the model, or why it failed.
The *runner* of the trainer (on a cluster, the Job controller seen through the Job and its pods; on
a laptop, the local runner's process) says what the trainer cannot: whether it runs at all, whether
it will be retried, and failures the trainer never got to report (a deadline, an OOM kill, a crash).
The runner states that as a `Verdict`; `job_status` adds the trainer's part. So every word on
`.status` that comes from the trainer is written here, once, and is the same on both backends:

- `Running` is True while the trainer runs, reason `Running`, message its current step ("training:
  epochs 1-5"); before its first event the runner's words ("pod x is running") stand in.
- `Succeeded`: reason `Succeeded`, message "test accuracy 0.9852 after 5 epochs (best epoch 4)
  model at URI".
- `Failed` with the trainer's own reason and message when its final event explains the failure
  (`InvalidData`, `Interrupted`, ...); when retries ran out on a retryable failure, reason
  `BackoffLimitExceeded` and message "REASON: MESSAGE". Runner facts (pod name, exit code, the end of
  the output) are never mixed into these words; they go into the runner's own conditions and Events.
- A condition that stops applying turns False with its resolved reason (`Running` -> `NotRunning`),
  unless the job failed or was suspended before it resolved: then it says so, with that reason
  (a `WaitingForJob` whose upstream failed closes `UpstreamFailed`, never `UpstreamSucceeded`);
  a condition keeps its lastTransitionTime while its status stays the same.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from transferjob.constants import HISTORY_LIMIT
from transferjob.models import (
    Condition,
    EpochMetrics,
    ModelArtifacts,
    Phase,
    StepProgressStatus,
    TestMetrics,
    TransferJobSpec,
    TransferJobStatus,
)
from transferjob.progress import EpochEnded, Failed, Finished, PhaseChanged, Started, StepProgress, decode

Event: TypeAlias = Started | PhaseChanged | StepProgress | EpochEnded | Finished | Failed
#: The conditions that are True now: type -> (reason, message).
Conditions: TypeAlias = dict[str, tuple[str, str]]

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})

#: Condition types that describe a passing state: when one stops applying because it resolved (the job
#: went on), it turns False with this reason and message. Every non-terminal condition type is here, so
#: none is left True after it stopped applying.
RESOLVED: dict[str, tuple[str, str]] = {
    "Starting": ("Started", "the trainer started"),
    "Running": ("NotRunning", ""),
    "Suspended": ("Resumed", ""),
    "WaitingForJob": ("UpstreamSucceeded", "the fromJob upstream succeeded: the job was created"),
    "Unschedulable": ("Scheduled", "the training pod was scheduled"),
    "ImagePullFailed": ("ImagePulled", "the kubelet no longer reports an image pull error"),
    "VolumeMountFailed": ("VolumesMounted", "the kubelet no longer reports a mount error"),
    "ContainerStartFailed": ("ContainerStarted", "the kubelet no longer reports a container error"),
    "PodCreateFailed": ("PodCreated", "the Job controller created the training pod"),
    "StartDelayed": ("Started", "the training pod is no longer waiting in ContainerCreating"),
}
#: The condition of a Pending job on its way to start, while nothing reports a problem.
STARTING = (
    "Starting",
    "the trainer has not started yet and nothing reports a problem; if this lasts, `kubectl describe pod` "
    "shows the pod's events (runPolicy.pendingTimeoutSeconds bounds the wait)",
)

#: Conditions whose resolution above is true whatever ended them; the others only resolve if the job
#: goes on, so when it fails or is suspended instead they close with that outcome's reason.
ALWAYS_RESOLVED = frozenset({"Running", "Suspended"})


@dataclass
class Progress:
    """What the trainer has said so far about one job, over all its attempts.

    The same events may arrive twice (a log stream re-read after a reconnect or an operator restart,
    then the termination message): applying them is idempotent, epochs are keyed by number (a resumed
    attempt that repeats an epoch replaces it), and the final `finished` event, when present, is the
    authority on the history and the best epoch.
    """

    epochs: int | None = None
    step: str | None = None
    history: dict[int, EpochMetrics] = field(default_factory=dict)
    best_epoch: int | None = None
    test: TestMetrics | None = None
    model: ModelArtifacts | None = None
    failure: Failed | None = None
    skipped_images: int = 0
    skipped_files: list[str] = field(default_factory=list)
    #: The latest `progress` event of the step under way; None once another step began or the run ended.
    step_progress: StepProgress | None = None

    @classmethod
    def of(cls, events: Iterable[Event]) -> Progress:
        """The fold of an event sequence."""
        progress = cls()
        for event in events:
            progress.apply(event)
        return progress

    @property
    def epoch(self) -> int | None:
        return max(self.history) if self.history else None

    @property
    def latest(self) -> EpochMetrics | None:
        return self.history[max(self.history)] if self.history else None

    @property
    def finished(self) -> bool:
        return self.test is not None

    def recent_history(self, limit: int = HISTORY_LIMIT) -> list[EpochMetrics]:
        """The newest `limit` epochs in order: `.status.history` is bounded, the output has them all."""
        return [self.history[e] for e in sorted(self.history)[-limit:]]

    def apply(self, event: Event) -> None:
        """Fold one event in; applying the same event again changes nothing."""
        if not isinstance(event, StepProgress | EpochEnded):
            self.step_progress = None
        if isinstance(event, StepProgress):
            self.step_progress = event
        elif isinstance(event, Started):
            self.epochs = event.epochs
            resumed = f" from epoch {event.initial_epoch + 1}" if event.initial_epoch else ""
            self.step = f"training {event.mode} on {event.base}{resumed}"
            self.failure = None  # a new attempt: an earlier attempt's failure no longer explains anything
            self.skipped_images, self.skipped_files = event.skipped_images, list(event.skipped_files)
        elif isinstance(event, PhaseChanged):
            self.step = f"{event.phase}: {event.message}" if event.message else event.phase
        elif isinstance(event, EpochEnded):
            self.epochs = event.epochs
            self.history[event.metrics.epoch] = event.metrics
        elif isinstance(event, Finished):
            for metrics in event.history:
                self.history[metrics.epoch] = metrics
            self.best_epoch = event.best_epoch
            self.test = event.test
            self.model = event.model
            self.failure = None
        else:
            self.failure = event

    def apply_line(self, line: str | bytes) -> Event | None:
        """Apply a log line if it is a protocol event; the event, or None for any other line."""
        event = decode(line)
        if event is not None:
            self.apply(event)
        return event

    def copy(self) -> Progress:
        """An independent copy: its history can be extended without touching this one's."""
        return dataclasses.replace(self, history=dict(self.history))


def best_epoch(history: list[EpochMetrics], monitor: str, min_delta: float = 0.0) -> int | None:
    """The epoch early stopping would keep so far: lowest val_loss or highest val_accuracy.

    Like Keras' EarlyStopping, a later epoch only counts as better when it improves by more than
    `min_delta`, so the value matches what the trainer restores at the end.
    """
    best: tuple[int, float] | None = None
    for metrics in sorted(history, key=lambda m: m.epoch):
        value = getattr(metrics, "val_accuracy" if monitor == "val_accuracy" else "val_loss")
        if value is None:
            continue
        score = value if monitor == "val_accuracy" else -value
        if best is None or score - best[1] > min_delta:
            best = (metrics.epoch, score)
    return best[0] if best else None


@dataclass(frozen=True)
class Verdict:
    """Where the runner of the trainer says a job stands, before the trainer's words are added.

    `conditions` are the ones the runner's own facts make True (Unschedulable, Suspended, a Failed
    the trainer did not explain, `Running` with the runner's words for a trainer that has not spoken
    yet). A Failed phase without a Failed condition means "the trainer's final event says why";
    `retries_exhausted` says whether that failure used up the last retry. `closing` says how
    conditions that stop applying now close when it is not by resolving (`merge_conditions`).
    """

    phase: Phase
    conditions: Conditions = field(default_factory=dict)
    completion_time: dt.datetime | None = None
    retries_exhausted: bool = False
    closing: Conditions = field(default_factory=dict)
    ended: Conditions = field(default_factory=dict)
    """Problems that held until this verdict ended them (a pending timeout's pod problems): each is
    recorded closed, with what it was, even if no earlier status showed it True."""


def success_message(progress: Progress) -> str:
    """The Succeeded condition's message: the result a person looks for first."""
    parts = []
    if progress.test is not None:
        parts.append(f"test accuracy {progress.test.accuracy:.4f}")
    if progress.history:
        parts.append(f"after {len(progress.history)} epochs")
    if progress.best_epoch is not None:
        parts.append(f"(best epoch {progress.best_epoch})")
    if progress.model is not None:
        parts.append(f"model at {progress.model.uri}")
    return " ".join(parts) or "training finished"


def trainer_failure(event: Failed, retries_exhausted: bool) -> tuple[str, str]:
    """The Failed condition's reason and message for a failure the trainer reported.

    The trainer's reason stands when no retry could help (`permanent`) or when the runner will not
    count it against the retries; a retryable failure that used up the last retry is
    `BackoffLimitExceeded`, with the trainer's reason and words in the message.
    """
    if event.permanent or not retries_exhausted:
        return event.reason, event.message
    return "BackoffLimitExceeded", f"{event.reason}: {event.message}"


def merge_conditions(
    previous: list[Condition],
    current: Conditions,
    now: dt.datetime,
    generation: int | None,
    closing: Conditions | None = None,
    ended: Conditions | None = None,
) -> list[Condition]:
    """Conditions, one per type: True ones from `current`, earlier True ones turned False.

    A True condition that is not in `current` turns False with the reason and message of `closing`
    for its type when given (what ended it), else with its resolution in `RESOLVED`. A condition
    keeps its lastTransitionTime while its status stays the same, so `kubectl describe` shows when
    something started, not when the operator last looked. A problem in `ended` (it held until now,
    and what ends the job ends it) that no earlier status showed True is recorded closed too, its
    message saying what it was: the status keeps what was seen whenever the operator happened to look.
    """
    closing = closing or {}
    merged: dict[str, Condition] = {}
    old = {c.type: c for c in previous}
    for ctype, cond in old.items():
        if ctype in current:
            continue
        if cond.status == "True" and ctype in RESOLVED:
            reason, message = closing.get(ctype) or RESOLVED[ctype]
            merged[ctype] = _closed(ctype, reason, message, now, generation)
        else:
            merged[ctype] = cond
    for ctype, (was_reason, was_message) in (ended or {}).items():
        before = old.get(ctype)
        if ctype in current or ctype not in RESOLVED or (before is not None and before.status == "True"):
            continue
        reason, message = closing.get(ctype) or RESOLVED[ctype]
        message = f"{message}; it was {was_reason}: {was_message}"
        if before is not None and (before.reason, before.message) == (reason, message):
            continue  # recorded already: it keeps its transition time
        merged[ctype] = _closed(ctype, reason, message, now, generation)
    for ctype, (reason, message) in current.items():
        merged[ctype] = true_condition(ctype, reason, message, old.get(ctype), now, generation)
    return [merged[t] for t in sorted(merged)]


def _closed(ctype: str, reason: str, message: str, now: dt.datetime, generation: int | None) -> Condition:
    """A condition that stopped applying now (status False, the reason says what ended it)."""
    return Condition(
        type=ctype,
        status="False",
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )


def true_condition(
    ctype: str, reason: str, message: str, before: Condition | None, now: dt.datetime, generation: int | None
) -> Condition:
    """A condition that holds now: its transition time stays the one it became True at, if it already was
    (a new reason or message is not a transition, as in Kubernetes' own conditions)."""
    since = before.last_transition_time if before is not None and before.status == "True" else None
    return Condition(
        type=ctype,
        status="True",
        reason=reason,
        message=message,
        last_transition_time=since or now,
        observed_generation=generation,
    )


def closing_conditions(phase: Phase, conditions: Conditions) -> Conditions:
    """How conditions that did not resolve close when the job failed or was suspended instead.

    A `WaitingForJob` or `Unschedulable` that stops applying because the job failed (its upstream
    failed, a pending timeout, a deadline) or was suspended (its pod deleted) did not resolve: it
    closes with the reason of what happened, never with `UpstreamSucceeded` or `Scheduled`.
    """
    outcome = "Failed" if phase is Phase.FAILED else "Suspended" if phase is Phase.SUSPENDED else None
    if outcome is None or outcome not in conditions:
        return {}
    reason, _message = conditions[outcome]
    if phase is Phase.FAILED:
        message = f"ended without resolving: the job failed ({reason})"
    else:
        message = f"ended without resolving: the job was suspended ({reason}), its pod deleted"
    return {ctype: (reason, message) for ctype in RESOLVED if ctype not in ALWAYS_RESOLVED}


def job_status(
    progress: Progress,
    verdict: Verdict,
    spec: TransferJobSpec,
    previous: TransferJobStatus | None,
    now: dt.datetime,
    generation: int | None = None,
    *,
    start_time: dt.datetime | None = None,
    job_name: str | None = None,
    restarts: int | None = None,
) -> TransferJobStatus:
    """The whole `.status`: the runner's verdict and facts, worded and measured by the trainer's events.

    `previous` is the status written last (conditions keep their transition times, start, completion
    and the Job's name carry over); `spec` gives the planned epochs and the early-stopping monitor
    that names the best epoch while no `finished` event has said it.
    """
    previous = previous or TransferJobStatus()
    conditions = dict(verdict.conditions)
    if verdict.phase is Phase.RUNNING and progress.step is not None:
        conditions["Running"] = ("Running", progress.step)
    elif verdict.phase is Phase.SUCCEEDED:
        conditions["Succeeded"] = ("Succeeded", success_message(progress))
    elif verdict.phase is Phase.FAILED and "Failed" not in conditions:
        conditions["Failed"] = (
            trainer_failure(progress.failure, verdict.retries_exhausted)
            if progress.failure is not None
            else ("Failed", "the training failed")
        )
    elif verdict.phase is Phase.PENDING and "WaitingForJob" not in conditions:
        # No state without a reason: a job on its way to start says so, problems or not (they have
        # conditions of their own); it closes as Started once the trainer runs.
        problems = sorted(conditions)
        conditions["Starting"] = (
            ("Starting", f"the trainer has not started yet: see the {', '.join(problems)} condition")
            if problems
            else STARTING
        )

    history = progress.recent_history()
    best = progress.best_epoch
    if best is None and history:
        stopping = spec.training.early_stopping
        best = best_epoch(history, stopping.monitor, stopping.min_delta)
    completion = previous.completion_time
    if verdict.phase in TERMINAL_PHASES and completion is None:
        completion = verdict.completion_time or now
    return TransferJobStatus(
        phase=verdict.phase,
        conditions=merge_conditions(
            previous.conditions,
            conditions,
            now,
            generation,
            {**verdict.closing, **closing_conditions(verdict.phase, conditions)},
            ended=verdict.ended,
        ),
        start_time=start_time or previous.start_time,
        completion_time=completion,
        job_name=job_name or previous.job_name,
        epoch=progress.epoch,
        epochs=progress.epochs or spec.training.epochs,
        metrics=progress.latest,
        progress=step_progress(progress.step_progress) if verdict.phase is Phase.RUNNING else None,
        history=history,
        best_epoch=best,
        test=progress.test,
        model=progress.model,
        restarts=restarts or None,
        skipped_images=progress.skipped_images or None,
        skipped_files=progress.skipped_files,
        observed_generation=generation,
    )


def step_progress(event: StepProgress | None) -> StepProgressStatus | None:
    """The `progress` event as `.status.progress`: a percentage and whole seconds, as people read them."""
    if event is None or event.total <= 0:
        return None
    return StepProgressStatus(
        step=event.step,
        percent=round(100.0 * min(event.done, event.total) / event.total, 1),
        epoch=event.epoch,
        images_per_second=round(event.images_per_second, 1) if event.images_per_second else None,
        remaining_seconds=round(event.remaining_seconds) if event.remaining_seconds is not None else None,
    )


def failure(status: TransferJobStatus) -> tuple[str, str]:
    """The reason and message of a failed job: its Failed condition, or its last true one."""
    for condition in status.conditions:
        if condition.type == "Failed" and condition.status == "True":
            return condition.reason or "Failed", condition.message
    true = [c for c in status.conditions if c.status == "True" and c.reason]
    if true:
        return true[-1].reason, true[-1].message
    return "Failed", ""
