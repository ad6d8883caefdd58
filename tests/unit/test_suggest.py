"""Choosing trials: Grid in a fixed order, Random and TPE reproducible from the sweep's status alone.

The operator is stateless: after a restart it replays a sweep from `.status`, so the same recorded trials
must give the same next trial, in any process, in any order of calls. And TPE must be worth having:
on a toy objective it finds better parameters than Random with the same budget.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from typing import Any

import pytest

from tests.cluster.admission import SWEEP_SPEC, merged
from transferjob.suggest import grid_size, startup_trials, suggest
from transferjob.sweeps import TransferSweepSpec, TrialPhase, TrialStatus, parse_sweep_spec

GRID = {
    "algorithm": {"name": "Grid"},
    "maxTrials": 100,
    "parameters": {
        "training.learningRate": {"logUniform": "<delete>", "categorical": {"values": [0.001, 0.0001]}},
        "training.batchSize": {"int": {"min": 16, "max": 60, "step": 16}},  # 16, 32, 48
        "training.optimizer": {"categorical": {"values": ["sgd", "adam"]}},
    },
}

#: Four parameters of four kinds, for Random and TPE.
SPACE = {
    "training.learningRate": {"logUniform": {"min": 1e-5, "max": 1e-1}},
    "model.head.dropout": {"uniform": {"min": 0.0, "max": 0.9}},
    "training.batchSize": {"categorical": {"values": [8, 16, 32, 64]}},
    "training.epochs": {"int": {"min": 1, "max": 20}},
}


def sweep(**changes: Any) -> TransferSweepSpec:
    """The corpus' good sweep, minimizing a loss (the toy objective's), with `changes`."""
    return parse_sweep_spec(merged({**SWEEP_SPEC, "objective": {"metric": "valLoss"}}, changes))


def finished(
    index: int, parameters: dict[str, Any], objective: float | None, phase: str = "Succeeded"
) -> TrialStatus:
    return TrialStatus(
        index=index, name=f"s-{index}", parameters=parameters, phase=phase, objective=objective
    )


def toy(parameters: dict[str, Any]) -> float:
    """A loss with its minimum 0 at learning rate 10^-3.5, dropout 0.3, batch 32, 12 epochs."""
    return (
        ((math.log10(parameters["training.learningRate"]) + 3.5) / 4) ** 2
        + ((parameters["model.head.dropout"] - 0.3) / 0.9) ** 2
        + (0.0 if parameters["training.batchSize"] == 32 else 0.05)
        + ((parameters["training.epochs"] - 12) / 19) ** 2
    )


def run(spec: TransferSweepSpec) -> list[TrialStatus]:
    """A sequential sweep of the toy objective to maxTrials."""
    trials: list[TrialStatus] = []
    while (parameters := suggest(spec, trials)) is not None:
        trials.append(finished(len(trials), parameters, toy(parameters)))
    return trials


# ------------------------------------------------------------------------------------------------ Grid


def test_grid_enumerates_in_a_fixed_order_and_stops_when_exhausted() -> None:
    spec = sweep(**GRID)
    assert grid_size(spec) == 12
    trials = draw(spec)
    assert len(trials) == 12
    # Sorted by path, the last (training.optimizer) fastest; values in the order written.
    assert [t.parameters for t in trials[:3]] == [
        {"training.batchSize": 16, "training.learningRate": 0.001, "training.optimizer": "sgd"},
        {"training.batchSize": 16, "training.learningRate": 0.001, "training.optimizer": "adam"},
        {"training.batchSize": 16, "training.learningRate": 0.0001, "training.optimizer": "sgd"},
    ]
    assert trials[-1].parameters == {
        "training.batchSize": 48,
        "training.learningRate": 0.0001,
        "training.optimizer": "adam",
    }
    assert len({json.dumps(t.parameters, sort_keys=True) for t in trials}) == 12
    assert suggest(spec, trials) is None


def draw(spec: TransferSweepSpec) -> list[TrialStatus]:
    """Every trial suggested, each recorded as failed: for algorithms that read no results."""
    trials: list[TrialStatus] = []
    while (parameters := suggest(spec, trials)) is not None:
        trials.append(finished(len(trials), parameters, None, phase="Failed"))
    return trials


def test_grid_stops_at_max_trials_first() -> None:
    assert len(draw(sweep(**{**GRID, "maxTrials": 5}))) == 5


def test_grid_of_switches_and_names() -> None:
    spec = sweep(
        algorithm={"name": "Grid"},
        parameters={
            "training.learningRate": "<delete>",
            "data.augmentation.enabled": {"categorical": {"values": [True, False]}},
            "model.head.pooling": {"categorical": {"values": ["max", "avg"]}},
        },
    )
    assert [tuple(t.parameters.values()) for t in draw(spec)] == [
        (True, "max"),
        (True, "avg"),
        (False, "max"),
        (False, "avg"),
    ]


# ---------------------------------------------------------------------------------------------- Random


def test_random_depends_on_seed_and_index_only() -> None:
    spec = sweep(algorithm={"name": "Random", "seed": 5}, parameters=SPACE, maxTrials=20)
    trials = run(spec)
    # The same trial n whatever the earlier trials' results were.
    other = [t.model_copy(update={"objective": 1.0, "phase": TrialPhase.FAILED}) for t in trials]
    for n in range(len(trials)):
        assert suggest(spec, other[:n]) == trials[n].parameters
    assert len({json.dumps(t.parameters, sort_keys=True) for t in trials}) == 20
    reseeded = run(sweep(algorithm={"name": "Random", "seed": 6}, parameters=SPACE, maxTrials=20))
    assert [t.parameters for t in reseeded] != [t.parameters for t in trials]


def test_random_samples_stay_in_their_distributions() -> None:
    trials = run(sweep(algorithm={"name": "Random", "seed": 1}, parameters=SPACE, maxTrials=200))
    for t in trials:
        p = t.parameters
        assert 1e-5 <= p["training.learningRate"] <= 1e-1
        assert float(f"{p['training.learningRate']:.6g}") == p["training.learningRate"]
        assert 0.0 <= p["model.head.dropout"] <= 0.9
        assert p["training.batchSize"] in (8, 16, 32, 64) and type(p["training.batchSize"]) is int
        assert 1 <= p["training.epochs"] <= 20 and type(p["training.epochs"]) is int
    # Log-uniform: each decade about equally often (50 expected per decade).
    decades = [math.floor(math.log10(t.parameters["training.learningRate"])) for t in trials]
    assert all(30 <= decades.count(d) <= 70 for d in (-5, -4, -3, -2)), decades


def test_int_range_steps_up_from_min() -> None:
    spec = sweep(
        algorithm={"name": "Random"},
        parameters={"training.batchSize": {"int": {"min": 8, "max": 50, "step": 16}}},
        maxTrials=60,
    )
    assert {t.parameters["training.batchSize"] for t in draw(spec)} == {8, 24, 40}


# ------------------------------------------------------------------------------------------------- TPE


def test_tpe_replays_the_same_after_a_restart() -> None:
    """Three trials run at a time and finish out of order; each suggestion saw the trials recorded at
    that moment. Replayed from those records in reverse order, and in a fresh interpreter (nothing kept
    in memory between calls), every suggestion comes out the same."""
    spec = sweep(algorithm={"name": "TPE", "seed": 11}, parameters=SPACE, maxTrials=16, parallelTrials=3)
    trials: list[TrialStatus] = []
    seen: list[list[TrialStatus]] = []  # what trial n's suggestion saw
    while True:
        running = [t for t in trials if t.phase is TrialPhase.RUNNING]
        if len(running) == 3 or (running and len(trials) == 16):
            # The oldest running trial but one finishes first (out of order); a few fail or stop.
            done = running[1] if len(running) > 1 else running[0]
            outcome: dict[str, Any] = {"phase": TrialPhase.SUCCEEDED, "objective": toy(done.parameters)}
            if done.index % 5 == 4:
                outcome = {"phase": TrialPhase.FAILED, "objective": None}
            elif done.index % 7 == 6:
                outcome = {"phase": TrialPhase.STOPPED, "objective": None, "curve": [0.9, 0.8]}
            trials[done.index] = done.model_copy(update=outcome)
            continue
        if len(trials) == 16:
            break
        seen.append([t.model_copy() for t in trials])
        parameters = suggest(spec, trials)
        assert parameters is not None
        trials.append(
            TrialStatus(index=len(trials), name=f"s-{len(trials)}", parameters=parameters, phase="Running")
        )
    assert suggest(spec, trials) is None
    suggested = [t.parameters for t in trials]
    assert len({json.dumps(p, sort_keys=True) for p in suggested}) == 16

    for n in reversed(range(16)):
        assert suggest(spec, seen[n]) == suggested[n], n

    script = (
        "import json, sys\n"
        "from transferjob.suggest import suggest\n"
        "from transferjob.sweeps import TransferSweepSpec, TrialStatus\n"
        "spec, seen = json.load(sys.stdin)\n"
        "spec = TransferSweepSpec.model_validate(spec)\n"
        "print(json.dumps([suggest(spec, [TrialStatus.model_validate(t) for t in s]) for s in seen]))\n"
    )
    payload = json.dumps([spec.to_dict(), [[t.to_dict() for t in s] for s in seen]])
    out = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == suggested


def test_tpe_reads_results_after_its_random_start() -> None:
    spec = sweep(algorithm={"name": "TPE", "seed": 2}, parameters=SPACE, maxTrials=30)
    trials = run(spec)[:12]
    assert startup_trials(30) == 6
    flipped = [t.model_copy(update={"objective": -t.objective}) for t in trials]  # type: ignore[operator]
    # The random start depends on (seed, n) only; after it, other results give other suggestions.
    assert suggest(spec, trials[:5]) == suggest(spec, flipped[:5])
    assert suggest(spec, trials) != suggest(spec, flipped)


def test_tpe_takes_values_as_the_api_server_writes_them_back() -> None:
    """The API server writes a float 0.0 back as 0 and drops nothing else; a value outside the space
    (a spec cannot change, but a hand-edited status can) is left out of the model, not an error."""
    spec = sweep(algorithm={"name": "TPE"}, parameters=SPACE, maxTrials=10)
    trials = run(spec)[:6]
    as_stored = [TrialStatus.model_validate(json.loads(json.dumps(t.to_dict()))) for t in trials]
    zero = as_stored[0].model_copy(
        update={"parameters": {**as_stored[0].parameters, "model.head.dropout": 0}}
    )
    odd = as_stored[1].model_copy(update={"parameters": {**as_stored[1].parameters, "training.batchSize": 7}})
    parameters = suggest(spec, [zero, odd, *as_stored[2:]])
    assert parameters is not None and set(parameters) == set(SPACE)


def test_a_gap_in_the_recorded_trials_is_an_error() -> None:
    spec = sweep(algorithm={"name": "TPE"})
    with pytest.raises(ValueError, match="without gaps"):
        suggest(spec, [finished(0, {}, 0.5), finished(2, {}, 0.5)])


def test_no_trial_beyond_max_trials() -> None:
    spec = sweep(algorithm={"name": "Random"}, maxTrials=2)
    assert suggest(spec, [finished(0, {}, 0.5), finished(1, {}, 0.5)]) is None


def test_startup_trials_scale_with_the_budget() -> None:
    assert [startup_trials(n) for n in (1, 6, 10, 30, 50, 500)] == [2, 2, 2, 6, 10, 10]


#: Measured on this toy objective, 30 trials each, seeds 0-19 (Optuna 4.9): TPE found the better best on
#: 13 of 20 seeds, median best 0.0334 against Random's 0.0548 (a ratio of 0.61). The thresholds leave
#: room for another Optuna 4.x: better on at least 11 seeds, median best at most 0.8 of Random's.
def test_tpe_beats_random_on_a_toy_objective() -> None:
    tpe, rand = [], []
    for seed in range(20):
        for algorithm, bests in (("TPE", tpe), ("Random", rand)):
            spec = sweep(algorithm={"name": algorithm, "seed": seed}, parameters=SPACE, maxTrials=30)
            bests.append(min(t.objective for t in run(spec)))  # type: ignore[type-var]
    better = sum(t < r for t, r in zip(tpe, rand, strict=True))
    assert better >= 11, (better, tpe, rand)
    assert statistics.median(tpe) <= 0.8 * statistics.median(rand), (
        statistics.median(tpe),
        statistics.median(rand),
    )
