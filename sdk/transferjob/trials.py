"""The trials of a TransferSweep: naming, building, judging and ranking them. Pure: no I/O, no clock.

What the operator (and a local sweep) needs besides the choice of parameters (`transferjob.suggest`):

- `trial_name`: trial n of sweep s is the TransferJob `s-n`.
- `apply`: the template with a trial's parameters, as the trial's validated `TransferJobSpec`, writing
  into its own sub-folder of the template's output location; a combination that makes no valid job is
  a `SpecError` naming the sweep's field.
- `objective_value` and `stopping_curve`: what a trial's TransferJob `.status` says about the objective,
  at the end and epoch by epoch.
- `should_stop`: the median early-stopping rule (`SweepEarlyStopping` states it).
- `best`: the succeeded trial with the best objective; `tally`: the counts `.status` shows.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic.alias_generators import to_snake

from transferjob.errors import SpecError
from transferjob.models import TransferJobSpec, TransferJobStatus
from transferjob.sweeps import (
    CURVE_LIMIT,
    FINISHED_TRIAL_PHASES,
    PATHS,
    Goal,
    Objective,
    ParameterValue,
    StoppingRule,
    SweepEarlyStopping,
    TransferJobTemplate,
    TrialPhase,
    TrialStatus,
)

#: Longest TransferJob name (it names the training Job and its pods).
MAX_JOB_NAME = 63
_PROBLEM = re.compile(r"^spec(?:\.(?P<field>[^:]+))?: (?P<message>.*)$", re.DOTALL)


def trial_name(sweep: str, index: int) -> str:
    """The TransferJob of trial `index`: `<sweep>-<index>`.

    Admission keeps sweep names short enough (`sweeps.MAX_SWEEP_NAME`) for every index below
    `MAX_TRIALS`; a longer result would be refused as a TransferJob name, so it is an error here.
    """
    if index < 0:
        raise ValueError(f"a trial index is >= 0, not {index}")
    name = f"{sweep}-{index}"
    if len(name) > MAX_JOB_NAME:
        raise ValueError(f"trial name {name!r} is longer than {MAX_JOB_NAME} characters")
    return name


def apply(
    template: TransferJobTemplate, parameters: Mapping[str, ParameterValue], name: str
) -> TransferJobSpec:
    """The spec of the trial `name`: `template` with `parameters` set at their paths, writing into the
    sub-folder `name` of the template's output location (each trial owns its location), validated and
    with the mode's defaults resolved for the trial's own values (a searched base's own fineTuneAt).

    A combination the TransferJob API refuses (an imageSize the searched base has no weights for)
    raises `SpecError` with each line naming the sweep field to change: `spec.parameters.<path>` when
    the problem is in a searched field, else `spec.template.<field>`, with the trial's parameters.
    """
    unknown = sorted(set(parameters) - set(PATHS.values()))
    if unknown:
        raise SpecError([f"spec.parameters.{path}: not a field a sweep can search" for path in unknown])
    child = template.to_dict()
    for path, value in parameters.items():
        node = child
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    location = child["output"]["location"]
    if "pvc" in location:
        sub_path = location["pvc"].get("subPath", "")
        location["pvc"]["subPath"] = f"{sub_path}/{name}" if sub_path else name
    else:
        key = "hostPath" if "hostPath" in location else "uri"
        location[key] = f"{location[key].rstrip('/')}/{name}"
    try:
        return TransferJobSpec.model_validate(child)
    except SpecError as error:
        raise SpecError([_sweep_problem(line, parameters) for line in error.problems]) from error


def _sweep_problem(line: str, parameters: Mapping[str, ParameterValue]) -> str:
    """A child spec's problem line as the sweep's: the searched field, or the template's."""
    given = ", ".join(f"{path}={value!r}" for path, value in sorted(parameters.items()))
    match = _PROBLEM.match(line)
    field = match["field"] if match else None
    message = match["message"] if match else line
    if field is not None:
        for path in parameters:
            if field == path or field.startswith(f"{path}.") or field.startswith(f"{path}["):
                return f"spec.parameters.{path}: {parameters[path]!r} makes an invalid TransferJob: {message}"
    where = f"spec.template.{field}" if field else "spec.template"
    return f"{where}: {message} (with the trial's parameters {given})"


def _attribute(metric: str) -> str:
    """`valAccuracy` -> `val_accuracy`, the EpochMetrics attribute."""
    return to_snake(metric)


def objective_value(objective: Objective, status: TransferJobStatus) -> float | None:
    """The objective of a finished trial, from its TransferJob's status; None when it has none.

    A test metric is the test-set evaluation; an epoch metric is its value at the kept epoch
    (`bestEpoch`, whose weights were exported when the template restores the best weights), else at
    the latest epoch, which is then the model exported.
    """
    if objective.metric in ("testAccuracy", "testLoss"):
        if status.test is None:
            return None
        return status.test.accuracy if objective.metric == "testAccuracy" else status.test.loss
    attribute = _attribute(objective.metric)
    kept = next((m for m in status.history if m.epoch == status.best_epoch), None)
    epoch = kept or status.metrics or (status.history[-1] if status.history else None)
    value = getattr(epoch, attribute) if epoch is not None else None
    return float(value) if value is not None else None


def stopping_curve(
    objective: Objective, status: TransferJobStatus, recorded: Sequence[float | None] = ()
) -> list[float | None]:
    """The trial's stopping metric per epoch (index 0 is epoch 1), its first `CURVE_LIMIT` epochs.

    A TransferJob's `.status.history` keeps its newest epochs only, so the curve already `recorded`
    on the sweep's status is merged in: a value once seen stays. None where no value is known.
    """
    attribute = _attribute(objective.stopping_metric)
    last = max([m.epoch for m in status.history] + [status.epoch or 0])
    curve: list[float | None] = list(recorded[:CURVE_LIMIT])
    curve.extend([None] * (min(last, CURVE_LIMIT) - len(curve)))
    for metrics in status.history:
        value = getattr(metrics, attribute)
        if metrics.epoch <= len(curve) and value is not None:
            curve[metrics.epoch - 1] = float(value)
    return curve


def should_stop(
    curve: Sequence[float | None],
    completed: Sequence[Sequence[float | None]],
    rule: SweepEarlyStopping,
    goal: Goal,
) -> bool:
    """Whether the median rule stops a running trial whose stopping curve so far is `curve`.

    `completed`: the curves of the sweep's succeeded trials. After the trial's epoch e = len(curve),
    e >= minEpochs, each completed trial with a value among its first e epochs contributes the mean
    of those values (its running average at e; all of its epochs if it ran fewer); with at least
    minTrials of them, the trial stops when its best value so far is strictly worse than their median.
    A trial with no value at all (its metric was NaN every epoch: it diverged) is worse than any.
    """
    epoch = len(curve)
    if rule.rule is StoppingRule.NONE or epoch < rule.min_epochs:
        return False
    averages = []
    for other in completed:
        values = [v for v in other[:epoch] if v is not None]
        if values:
            averages.append(statistics.fmean(values))
    if len(averages) < rule.min_trials:
        return False
    median = statistics.median(averages)
    seen = [v for v in curve if v is not None]
    if not seen:
        return True
    if goal is Goal.MAXIMIZE:
        return max(seen) < median
    return min(seen) > median


def best(trials: Sequence[TrialStatus], objective: Objective) -> TrialStatus | None:
    """The succeeded trial with the best objective value (the lowest index among equals), if any.

    Only a succeeded trial exported a model to hand on; a stopped one never finished.
    """
    ranked = [t for t in trials if t.phase is TrialPhase.SUCCEEDED and t.objective is not None]
    if not ranked:
        return None
    sign = -1.0 if objective.direction is Goal.MAXIMIZE else 1.0
    return min(ranked, key=lambda t: (sign * t.objective, t.index))  # type: ignore[operator]


@dataclass(frozen=True)
class Tally:
    """The trial counts `TransferSweepStatus` shows (`finishedTrials`, `runningTrials`, `failedTrials`)."""

    finished: int
    running: int
    failed: int


def tally(trials: Sequence[TrialStatus]) -> Tally:
    """Count the trials by where they are."""
    return Tally(
        finished=sum(t.phase in FINISHED_TRIAL_PHASES for t in trials),
        running=sum(t.phase not in FINISHED_TRIAL_PHASES for t in trials),
        failed=sum(t.phase is TrialPhase.FAILED for t in trials),
    )
