"""Running a TransferSweep: the one pure step the operator and the local backend both take.

`plan_sweep(sweep, children, now)` reads a sweep (its spec and the `.status` last written) and its
trial TransferJobs as they are now, and says what to do: the new `.status`, the trial TransferJobs to
create, the ones to delete (stopped early) and to suspend or resume, and the Events to post. It keeps
no state and does no I/O, so the operator (`transferjob_operator.sweeper`) and a local sweep
(`transferjob.client.run_sweep_here`) run the same trials, and a restarted operator continues from
`.status` alone.

The order that makes restarts safe is the caller's: **write `.status` first, then create**. A trial is
recorded (index, name, parameters, phase Pending) in the status this step returns before any
TransferJob of it exists; `create` then lists every recorded Pending trial without a TransferJob,
rebuilt from its recorded parameters. A process that dies between the two steps finds the trial on
`.status` and creates it (or adopts it, when the create had gone through: trial n is always the
TransferJob `<sweep>-n`), and never records a second, different trial n. Likewise a trial stopped
early is recorded Stopped before its TransferJob is deleted.

What each trial's TransferJob says becomes its record: Pending or Suspended -> Pending, Running ->
Running, Succeeded -> Succeeded with its objective, Failed -> Failed with the reason. A Running trial
whose TransferJob disappeared failed; a Pending one is created (again). Stopping is the median rule
(`trials.should_stop`) on the per-epoch curve the trial's `.status.history` already carries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from transferjob.constants import LABEL_KUEUE_QUEUE, LABEL_SWEEP, LABEL_TRIAL
from transferjob.errors import SpecError
from transferjob.models import Condition, ObjectMeta, Phase, TransferJob, TransferJobStatus
from transferjob.status import failure, true_condition
from transferjob.suggest import grid_size, suggest
from transferjob.sweeps import (
    FINISHED_TRIAL_PHASES,
    AlgorithmName,
    BestTrial,
    TransferSweep,
    TransferSweepSpec,
    TransferSweepStatus,
    TrialPhase,
    TrialStatus,
)
from transferjob.trials import apply, best, objective_value, should_stop, stopping_curve, tally, trial_name

#: The sweep's condition types; the one of its phase is True, the others False once they were set.
CONDITION_TYPES = ("Running", "Suspended", "Succeeded", "Failed")
TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED})


@dataclass(frozen=True)
class SweepEvent:
    """An Event to post about the sweep."""

    type: str
    reason: str
    message: str


@dataclass
class SweepPlan:
    """What one step decided. The caller writes `status` first, then does the rest."""

    status: TransferSweepStatus
    #: Trial TransferJobs to create (named, labelled; the operator adds the owner reference).
    create: list[TransferJob] = field(default_factory=list)
    #: Trial TransferJobs to delete: stopped early, or stopped because the sweep failed.
    delete: list[str] = field(default_factory=list)
    #: Trial TransferJobs whose `spec.runPolicy.suspend` must become the value given.
    suspend: dict[str, bool] = field(default_factory=dict)
    events: list[SweepEvent] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status.phase in TERMINAL


def trial_job(sweep: TransferSweep, trial: TrialStatus) -> TransferJob:
    """Trial `trial`'s TransferJob: the template with its parameters, labelled with the sweep and index.

    A Kueue queue label on the sweep goes on every trial, so each trial is queued as a TransferJob is.
    Raises `SpecError` when the parameters make no valid TransferJob (`trials.apply`).
    """
    spec = apply(sweep.spec.template, trial.parameters, trial.name)
    labels = {LABEL_SWEEP: sweep.metadata.name or "", LABEL_TRIAL: str(trial.index)}
    queue = sweep.metadata.labels.get(LABEL_KUEUE_QUEUE)
    if queue is not None:
        labels[LABEL_KUEUE_QUEUE] = queue
    meta = ObjectMeta(name=trial.name, namespace=sweep.metadata.namespace, labels=labels)
    return TransferJob(metadata=meta, spec=spec)


def _more(spec: TransferSweepSpec, recorded: int) -> bool:
    """Whether the sweep has a trial `recorded` (the budget, or for Grid the grid, not used up)."""
    if recorded >= spec.max_trials:
        return False
    return spec.algorithm.name is not AlgorithmName.GRID or recorded < grid_size(spec)


def _observe(trial: TrialStatus, child: TransferJob, spec: TransferSweepSpec) -> TrialStatus:
    """The trial's record from its TransferJob as it is now."""
    status = child.status or TransferJobStatus()
    update: dict[str, object] = {
        "curve": stopping_curve(spec.objective, status, trial.curve),
        "epochs": status.epoch if status.epoch is not None else trial.epochs,
    }
    if status.phase is Phase.SUCCEEDED:
        value = objective_value(spec.objective, status)
        update["phase"] = TrialPhase.SUCCEEDED
        update["objective"] = value
        update["message"] = "" if value is not None else f"succeeded without a {spec.objective.metric}"
    elif status.phase is Phase.FAILED:
        reason, message = failure(status)
        update["phase"] = TrialPhase.FAILED
        update["message"] = f"{reason}: {message}" if message else reason
    elif status.phase is Phase.RUNNING:
        update["phase"] = TrialPhase.RUNNING
    else:
        update["phase"] = TrialPhase.PENDING
    return trial.model_copy(update=update)


def _ended(trial: TrialStatus, phase: TrialPhase, message: str) -> TrialStatus:
    return trial.model_copy(update={"phase": phase, "message": message})


def _trial_event(trial: TrialStatus, metric: str) -> SweepEvent:
    values = ", ".join(f"{path}={value}" for path, value in sorted(trial.parameters.items()))
    if trial.phase is TrialPhase.SUCCEEDED:
        return SweepEvent("Normal", "TrialSucceeded", f"{trial.name}: {metric} {trial.objective} ({values})")
    if trial.phase is TrialPhase.STOPPED:
        return SweepEvent("Normal", "TrialStopped", f"{trial.name}: {trial.message} ({values})")
    return SweepEvent("Warning", "TrialFailed", f"{trial.name}: {trial.message} ({values})")


def _conditions(
    previous: list[Condition],
    phase: Phase,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> list[Condition]:
    """One condition per type: the phase's True, the others False once they were set."""
    old = {c.type: c for c in previous}
    merged = []
    for ctype in CONDITION_TYPES:
        before = old.get(ctype)
        if ctype == phase.value:
            merged.append(true_condition(ctype, reason, message, before, now, generation))
        elif before is not None:
            if before.status == "True":
                before = before.model_copy(update={"status": "False", "last_transition_time": now})
            merged.append(before)
    return merged


def plan_sweep(
    sweep: TransferSweep,
    children: Mapping[str, TransferJob],
    now: dt.datetime,
    refused: Mapping[str, str] | None = None,
) -> SweepPlan:
    """One step of `sweep`; see the module docstring.

    `children`: the sweep's trial TransferJobs by name (only those it owns); `refused`: trials whose
    TransferJob cannot be created, by name, with why (the name is another object's, the API server
    refused it): those trials fail.
    """
    refused = refused or {}
    spec = sweep.spec
    old = sweep.status or TransferSweepStatus()
    if old.phase in TERMINAL:
        return SweepPlan(status=old)
    name = sweep.metadata.name or ""
    metric = spec.objective.metric
    trials = list(old.trials)
    delete: list[str] = []

    for i, trial in enumerate(trials):
        if trial.phase in FINISHED_TRIAL_PHASES:
            continue
        child = children.get(trial.name)
        if child is not None:
            trials[i] = _observe(trial, child, spec)
        elif trial.name in refused:
            trials[i] = _ended(trial, TrialPhase.FAILED, refused[trial.name])
        elif trial.phase is TrialPhase.RUNNING:
            trials[i] = _ended(
                trial, TrialPhase.FAILED, f"TransferJob {trial.name} was deleted while running"
            )

    completed = [t.curve for t in trials if t.phase is TrialPhase.SUCCEEDED]
    for i, trial in enumerate(trials):
        if trial.phase is TrialPhase.RUNNING and should_stop(
            trial.curve, completed, spec.early_stopping, spec.objective.direction
        ):
            trials[i] = _ended(
                trial,
                TrialPhase.STOPPED,
                f"stopped by the median rule after epoch {len(trial.curve)}: "
                f"its {spec.objective.stopping_metric} is behind the succeeded trials'",
            )
            delete.append(trial.name)

    def failed() -> int:
        return sum(t.phase is TrialPhase.FAILED for t in trials)

    def unfinished() -> int:
        return sum(t.phase not in FINISHED_TRIAL_PHASES for t in trials)

    if not spec.suspend:
        while failed() <= spec.max_failed_trials and unfinished() < spec.parallel_trials:
            parameters = suggest(spec, trials)
            if parameters is None:
                break
            index = len(trials)
            trial = TrialStatus(index=index, name=trial_name(name, index), parameters=parameters)
            try:
                trial_job(sweep, trial)
            except SpecError as error:
                trial = _ended(trial, TrialPhase.FAILED, "; ".join(error.problems))
            trials.append(trial)

    over_budget = failed() > spec.max_failed_trials
    if over_budget:
        for i, trial in enumerate(trials):
            if trial.phase not in FINISHED_TRIAL_PHASES:
                trials[i] = _ended(trial, TrialPhase.STOPPED, "stopped: the sweep failed")
                if trial.name in children:
                    delete.append(trial.name)

    create: list[TransferJob] = []
    suspend: dict[str, bool] = {}
    wanted_suspend = spec.suspend or spec.template.run_policy.suspend
    for trial in trials:
        if trial.phase in FINISHED_TRIAL_PHASES:
            continue
        child = children.get(trial.name)
        if child is None:
            if not spec.suspend:
                create.append(trial_job(sweep, trial))
        elif child.spec.run_policy.suspend != wanted_suspend:
            suspend[trial.name] = wanted_suspend

    top = best(trials, spec.objective)
    best_trial = None
    if top is not None and top.objective is not None:
        child = children.get(top.name)
        model = child.status.model if child is not None and child.status is not None else None
        if model is None and old.best_trial is not None and old.best_trial.name == top.name:
            model = old.best_trial.model
        best_trial = BestTrial(index=top.index, name=top.name, objective=top.objective, model=model)

    counts = tally(trials)
    if over_budget:
        phase, reason = Phase.FAILED, "TooManyFailedTrials"
        message = f"{counts.failed} trials failed, more than maxFailedTrials ({spec.max_failed_trials})"
    elif counts.running == 0 and not _more(spec, len(trials)):
        if best_trial is not None:
            phase, reason = Phase.SUCCEEDED, "Succeeded"
            message = f"best trial {best_trial.name}: {metric} {best_trial.objective}"
        else:
            phase, reason = Phase.FAILED, "NoTrialSucceeded"
            message = f"none of the {len(trials)} trials succeeded with a {metric}"
    elif spec.suspend:
        phase, reason, message = Phase.SUSPENDED, "Suspended", "spec.suspend is true"
    elif any(t.phase is TrialPhase.RUNNING for t in trials):
        phase, reason = Phase.RUNNING, "TrialsRunning"
        message = f"{counts.running} trials running or pending, {counts.finished} finished"
    else:
        phase, reason, message = Phase.PENDING, "TrialsPending", "waiting for trials to start"

    generation = sweep.metadata.generation
    status = TransferSweepStatus(
        phase=phase,
        conditions=_conditions(old.conditions, phase, reason, message, now, generation),
        start_time=old.start_time or (now if trials else None),
        completion_time=now if phase in TERMINAL else None,
        trials=trials,
        finished_trials=counts.finished,
        running_trials=counts.running,
        failed_trials=counts.failed,
        best_trial=best_trial,
        observed_generation=generation,
    )

    events = []
    before = {t.index: t.phase for t in old.trials}
    for trial in trials:
        if trial.phase in FINISHED_TRIAL_PHASES and before.get(trial.index) != trial.phase:
            events.append(_trial_event(trial, metric))
    if phase is not old.phase and phase in TERMINAL:
        kind = "Normal" if phase is Phase.SUCCEEDED else "Warning"
        events.append(SweepEvent(kind, f"Sweep{phase.value}", message))
    return SweepPlan(status=status, create=create, delete=delete, suspend=suspend, events=events)
