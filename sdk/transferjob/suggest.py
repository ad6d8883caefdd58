"""The next trial's parameters: Grid, Random, or Optuna's TPE. Pure: no I/O, no clock, no state.

The operator keeps no state of its own: after a restart it knows a sweep only from the sweep's
`.status`. So `suggest(spec, trials)` depends on nothing but the spec (its seed) and the trials
recorded so far (their parameters, phases, objectives and curves), and gives trial n = len(trials):

- Grid enumerates the product of the parameters' values (categorical values in the order written, int
  ranges upwards), parameters sorted by path with the last varying fastest; trial n is grid point n.
  After the last point there is nothing to suggest (None), whatever maxTrials says.
- Random draws each parameter independently with numpy's `Generator` seeded by (seed, n): trial n's
  parameters depend on nothing else.
- TPE is Optuna's `TPESampler` in ask-and-tell mode on an in-memory study rebuilt, for every
  suggestion, from the recorded trials: succeeded ones as COMPLETE with their objective, stopped ones
  as PRUNED with their curve as intermediate values, failed ones as FAIL, pending and running ones as
  RUNNING (with `constant_liar`, so trials started side by side do not all get the same point). The
  sampler is seeded by (seed, n). Its first `startup_trials(maxTrials)` trials are random (TPE needs
  finished trials to model).

The same (spec, trials) always give the same parameters: the operator can record trial n in the
sweep's status before it creates trial n's TransferJob, and after a restart creates whatever is
recorded and missing, never a second, different trial n.

Needs numpy and Optuna (the `operator` extra).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from transferjob.sweeps import (
    SAMPLE_DIGITS,
    AlgorithmName,
    Choice,
    Continuous,
    Distribution,
    Goal,
    Integers,
    ParameterValue,
    TransferSweepSpec,
    TrialPhase,
    TrialStatus,
)

#: Parameters of one trial, by path.
Parameters = dict[str, ParameterValue]


def suggest(spec: TransferSweepSpec, trials: Sequence[TrialStatus]) -> Parameters | None:
    """Trial n's parameters, n = len(trials); None when the sweep has no trial n (maxTrials reached,
    or the grid exhausted). `trials` are the recorded trials, indexes 0 to n-1 in order."""
    indexes = [t.index for t in trials]
    if indexes != list(range(len(trials))):
        raise ValueError(f"trials must be recorded by index from 0 without gaps, not {indexes}")
    n = len(trials)
    if n >= spec.max_trials:
        return None
    space = [(path, parameter.distribution()) for path, parameter in spec.parameters.items()]
    if spec.algorithm.name is AlgorithmName.GRID:
        return _grid(space, n)
    if spec.algorithm.name is AlgorithmName.RANDOM:
        return _random(space, spec.algorithm.seed, n)
    return _tpe(spec, space, trials)


def grid_size(spec: TransferSweepSpec) -> int:
    """How many points a Grid sweep's space has (admission allows only enumerable parameters)."""
    return math.prod(len(_points(p.distribution())) for _, p in spec.parameters.items())


def _points(distribution: Distribution) -> Sequence[ParameterValue]:
    if isinstance(distribution, Choice):
        return distribution.values
    if isinstance(distribution, Integers):
        return distribution.values()
    raise ValueError("a continuous range has no grid points")  # admission refuses it for Grid


def _grid(space: list[tuple[str, Distribution]], n: int) -> Parameters | None:
    points = [(path, _points(d)) for path, d in space]
    if n >= math.prod(len(values) for _, values in points):
        return None
    chosen: Parameters = {}
    for path, values in reversed(points):  # mixed radix, the last parameter the fastest digit
        n, digit = divmod(n, len(values))
        chosen[path] = values[digit]
    return dict(sorted(chosen.items()))


def _rounded(value: float, low: float, high: float) -> float:
    """A sampled float with `SAMPLE_DIGITS` significant digits, kept inside its range."""
    return min(max(float(f"{value:.{SAMPLE_DIGITS}g}"), low), high)


def _random(space: list[tuple[str, Distribution]], seed: int, n: int) -> Parameters:
    rng = np.random.default_rng([seed, n])
    chosen: Parameters = {}
    for path, d in space:
        if isinstance(d, Continuous):
            x = (
                math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
                if d.log
                else rng.uniform(d.low, d.high)
            )
            chosen[path] = _rounded(float(x), d.low, d.high)
        elif isinstance(d, Integers):
            chosen[path] = d.low + d.step * int(rng.integers(len(d.values())))
        else:
            chosen[path] = d.values[int(rng.integers(len(d.values)))]
    return chosen


def startup_trials(max_trials: int) -> int:
    """Random trials before TPE models the finished ones: a fifth of the budget, 2 to 10.

    Optuna's default of 10 would leave a 6-trial sweep all random; on the toy objective of
    tests/unit/test_suggest.py (30 trials, seeds 0-19) 6 random trials gave a median best of 0.033,
    10 gave 0.040 (Random alone: 0.055).
    """
    return max(2, min(10, max_trials // 5))


def _derived_seed(seed: int, n: int) -> int:
    """One 32-bit seed from (seed, n), as numpy mixes them for Random."""
    return int(np.random.SeedSequence([seed, n]).generate_state(1)[0])


def _optuna_distribution(d: Distribution) -> BaseDistribution:
    if isinstance(d, Continuous):
        return FloatDistribution(d.low, d.high, log=d.log)
    if isinstance(d, Integers):
        return IntDistribution(d.low, d.high, step=d.step)
    return CategoricalDistribution(d.values)


def _recorded_value(d: Distribution, value: ParameterValue) -> ParameterValue | None:
    """A value as recorded on `.status`, in its distribution's own type (the API server writes 0.0 back
    as 0), or None if it is not in the distribution."""
    if isinstance(d, Choice):
        # `True == 1` in Python: a switch and a number are never the same value.
        return next(
            (v for v in d.values if v == value and isinstance(v, bool) == isinstance(value, bool)), None
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(d, Integers):
        return int(value) if value == int(value) and int(value) in d.values() else None
    return float(value) if d.low <= value <= d.high else None


def _frozen(trial: TrialStatus, space: list[tuple[str, Distribution]]) -> FrozenTrial:
    params: Parameters = {}
    distributions: dict[str, BaseDistribution] = {}
    for path, d in space:
        value = _recorded_value(d, trial.parameters[path]) if path in trial.parameters else None
        if value is not None:
            params[path] = value
            distributions[path] = _optuna_distribution(d)
    if trial.phase is TrialPhase.SUCCEEDED and trial.objective is not None:
        return optuna.trial.create_trial(
            params=params, distributions=distributions, value=trial.objective, state=TrialState.COMPLETE
        )
    if trial.phase is TrialPhase.STOPPED:
        steps = {epoch: v for epoch, v in enumerate(trial.curve, start=1) if v is not None}
        return optuna.trial.create_trial(
            params=params, distributions=distributions, intermediate_values=steps, state=TrialState.PRUNED
        )
    state = TrialState.RUNNING if trial.phase in (TrialPhase.PENDING, TrialPhase.RUNNING) else TrialState.FAIL
    return optuna.trial.create_trial(params=params, distributions=distributions, state=state)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """No INFO line per rebuilt study in the operator's log, no ExperimentalWarning for constant_liar."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _tpe(
    spec: TransferSweepSpec, space: list[tuple[str, Distribution]], trials: Sequence[TrialStatus]
) -> Parameters:
    n = len(trials)
    with _quiet_optuna():
        sampler = optuna.samplers.TPESampler(
            seed=_derived_seed(spec.algorithm.seed, n),
            n_startup_trials=startup_trials(spec.max_trials),
            constant_liar=True,
        )
        direction = "maximize" if spec.objective.direction is Goal.MAXIMIZE else "minimize"
        study = optuna.create_study(direction=direction, sampler=sampler)
        for trial in trials:
            study.add_trial(_frozen(trial, space))
        asked = study.ask({path: _optuna_distribution(d) for path, d in space})
    chosen: Parameters = {}
    for path, d in space:
        value = asked.params[path]
        chosen[path] = _rounded(value, d.low, d.high) if isinstance(d, Continuous) else value
    return chosen
