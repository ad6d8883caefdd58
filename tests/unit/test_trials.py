"""A sweep's trials: named, built from the template, judged by the median rule, ranked.

What a user would notice: each trial is a valid TransferJob writing to its own folder, a combination that
cannot run names the sweep field to change, a trial is stopped only when it is clearly behind the
finished ones, and the best trial is the one with the best objective.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.admission import SWEEP_SPEC, merged
from transferjob.errors import SpecError
from transferjob.models import EpochMetrics, Mode, TestMetrics, TransferJobStatus
from transferjob.sweeps import (
    CURVE_LIMIT,
    MAX_SWEEP_NAME,
    MAX_TRIALS,
    Goal,
    Objective,
    SweepEarlyStopping,
    TransferSweepSpec,
    TrialPhase,
    TrialStatus,
    parse_sweep_spec,
)
from transferjob.trials import apply, best, objective_value, should_stop, stopping_curve, tally, trial_name


def sweep(**changes: Any) -> TransferSweepSpec:
    return parse_sweep_spec(merged(SWEEP_SPEC, changes))


# ---------------------------------------------------------------------------------------------- names


def test_trial_names_fit_a_transferjob_name() -> None:
    assert trial_name("flowers", 0) == "flowers-0"
    longest = "s" * MAX_SWEEP_NAME
    assert len(trial_name(longest, MAX_TRIALS - 1)) == 63
    with pytest.raises(ValueError, match="longer than 63"):
        trial_name(longest + "s", MAX_TRIALS - 1)
    with pytest.raises(ValueError):
        trial_name("flowers", -1)


# ---------------------------------------------------------------------------------------------- apply


def test_apply_sets_each_parameter_and_gives_the_trial_its_own_folder() -> None:
    spec = sweep()
    child = apply(
        spec.template,
        {"training.learningRate": 0.000123, "model.head.dropout": 0.0, "data.augmentation.enabled": False},
        "flowers-3",
    )
    assert child.training.learning_rate == 0.000123
    assert child.model.head.dropout == 0.0
    assert child.data.augmentation.enabled is False
    assert child.training.epochs == 5  # the mode's default, resolved for the trial
    assert child.output.location.pvc is not None
    assert (child.output.location.pvc.claim_name, child.output.location.pvc.sub_path) == (
        "models",
        "flowers-3",
    )
    # The template is left as it was.
    assert spec.template.training.learning_rate is None
    assert spec.template.output.location.pvc is not None and spec.template.output.location.pvc.sub_path == ""


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ({"pvc": {"claimName": "models", "subPath": "sweeps/lr"}}, ("pvc", "sweeps/lr/s-1")),
        ({"hostPath": "/models/"}, ("host_path", "/models/s-1")),
        ({"uri": "s3://bucket/sweeps"}, ("uri", "s3://bucket/sweeps/s-1")),
        ({"uri": "gs://bucket/"}, ("uri", "gs://bucket/s-1")),
    ],
)
def test_each_kind_of_output_location_gets_a_sub_folder(
    location: dict[str, Any], expected: tuple[str, str]
) -> None:
    spec = parse_sweep_spec(
        {**SWEEP_SPEC, "template": {**SWEEP_SPEC["template"], "output": {"location": location}}}
    )
    child = apply(spec.template, {"training.learningRate": 0.001}, "s-1")
    kind, value = expected
    found = getattr(child.output.location, kind)
    assert (found.sub_path if kind == "pvc" else found) == value


def test_a_searched_base_gets_its_own_fine_tuning_layer() -> None:
    spec = sweep(template={"mode": "FineTuning", "model": {"fromJob": "fe"}})
    vgg = apply(spec.template, {"model.base": "VGG16", "model.imageSize": 64}, "s-0")
    assert vgg.mode is Mode.FINE_TUNING
    assert (vgg.model.base, vgg.model.fine_tune_at) == ("VGG16", "block5_conv1")
    assert vgg.training.learning_rate == 1e-5  # fine-tuning's default
    mobilenet = apply(spec.template, {"model.base": "MobileNetV2"}, "s-1")
    assert mobilenet.model.fine_tune_at == "block_13_expand"


def test_a_combination_that_cannot_run_names_the_searched_field() -> None:
    spec = sweep()
    with pytest.raises(SpecError) as caught:
        apply(spec.template, {"model.imageSize": 100, "training.learningRate": 0.001}, "s-0")
    (line,) = caught.value.problems
    assert line.startswith(
        "spec.parameters.model.imageSize: 100 makes an invalid TransferJob: imageSize must be"
    )


def test_a_combination_that_breaks_a_template_field_names_it_with_the_parameters() -> None:
    spec = sweep(template={"mode": "FineTuning", "model": {"fromJob": "fe"}})
    with pytest.raises(SpecError) as caught:
        apply(spec.template, {"model.base": "NASNetMobile"}, "s-0")
    (line,) = caught.value.problems
    assert line.startswith("spec.template.model.fineTuneAt: model.fineTuneAt is required")
    assert line.endswith("(with the trial's parameters model.base='NASNetMobile')")


def test_an_output_folder_too_long_for_the_trial_names_the_template() -> None:
    spec = sweep(template={"output": {"location": {"pvc": {"subPath": "x" * 1020}}}})
    with pytest.raises(SpecError, match=r"^spec\.template\.output\.location\.pvc\.subPath: "):
        apply(spec.template, {"training.learningRate": 0.001}, "flowers-1")


def test_a_path_no_sweep_searches_is_refused() -> None:
    with pytest.raises(SpecError, match=r"spec\.parameters\.mode: not a field a sweep can search"):
        apply(sweep().template, {"mode": "FineTuning"}, "s-0")


# ------------------------------------------------------------------------------------------ objective


def _status(**fields: Any) -> TransferJobStatus:
    return TransferJobStatus.model_validate(fields)


HISTORY = [
    {"epoch": 1, "loss": 0.9, "valLoss": 0.8, "valAccuracy": 0.6},
    {"epoch": 2, "loss": 0.5, "valLoss": 0.4, "valAccuracy": 0.85},
    {"epoch": 3, "loss": 0.3, "valLoss": 0.45, "valAccuracy": 0.8},
]


def test_objective_of_an_epoch_metric_is_taken_at_the_kept_epoch() -> None:
    status = _status(history=HISTORY, metrics=HISTORY[-1], bestEpoch=2, epoch=3)
    assert objective_value(Objective(metric="valAccuracy"), status) == 0.85
    assert objective_value(Objective(metric="loss"), status) == 0.5
    no_best = _status(history=HISTORY, metrics=HISTORY[-1], epoch=3)
    assert objective_value(Objective(metric="valAccuracy"), no_best) == 0.8


def test_objective_of_a_test_metric_needs_the_test_evaluation() -> None:
    status = _status(history=HISTORY, bestEpoch=2, test=TestMetrics(loss=0.31, accuracy=0.9).to_dict())
    assert objective_value(Objective(metric="testAccuracy"), status) == 0.9
    assert objective_value(Objective(metric="testLoss"), status) == 0.31
    assert objective_value(Objective(metric="testAccuracy"), _status(history=HISTORY)) is None
    assert objective_value(Objective(metric="valLoss"), _status()) is None


def test_stopping_curve_follows_the_epochs_and_keeps_what_was_recorded() -> None:
    objective = Objective(metric="testAccuracy")  # its stopping metric is valAccuracy
    assert stopping_curve(objective, _status(history=HISTORY, epoch=3)) == [0.6, 0.85, 0.8]
    # A history trimmed to its newest epochs, and an epoch with no value (NaN reported as missing).
    trimmed = _status(history=[{"epoch": 3, "valAccuracy": 0.8}, {"epoch": 4}], epoch=4)
    assert stopping_curve(objective, trimmed) == [None, None, 0.8, None]
    assert stopping_curve(objective, trimmed, recorded=[0.6, 0.85]) == [0.6, 0.85, 0.8, None]
    long = _status(
        history=[EpochMetrics(epoch=e, val_accuracy=0.5).to_dict() for e in range(150, 160)], epoch=159
    )
    assert len(stopping_curve(objective, long)) == CURVE_LIMIT


# ------------------------------------------------------------------------------------- early stopping

MEDIAN = SweepEarlyStopping(rule="Median", min_epochs=2, min_trials=3)
#: Three finished trials' validation accuracy: running averages after 2 epochs 0.5, 0.6, 0.7.
DONE = [[0.4, 0.6, 0.9], [0.5, 0.7, 0.8], [0.6, 0.8, 0.85]]


def test_median_rule_stops_a_trial_clearly_behind() -> None:
    assert should_stop([0.3, 0.55], DONE, MEDIAN, Goal.MAXIMIZE)  # best 0.55 < median 0.6
    assert not should_stop([0.3, 0.6], DONE, MEDIAN, Goal.MAXIMIZE)  # equal to the median: goes on
    assert not should_stop([0.3, 0.7], DONE, MEDIAN, Goal.MAXIMIZE)


def test_median_rule_waits_for_min_epochs_and_min_trials() -> None:
    assert not should_stop([0.1], DONE, MEDIAN, Goal.MAXIMIZE)
    assert not should_stop([0.1, 0.1], DONE[:2], MEDIAN, Goal.MAXIMIZE)
    assert not should_stop([0.1, 0.1], DONE, SweepEarlyStopping(rule="None"), Goal.MAXIMIZE)


def test_median_rule_minimizes_a_loss() -> None:
    losses = [[0.9, 0.5], [0.8, 0.4], [0.7, 0.3]]  # running averages 0.7, 0.6, 0.5
    assert should_stop([0.9, 0.65], losses, MEDIAN, Goal.MINIMIZE)
    assert not should_stop([0.9, 0.6], losses, MEDIAN, Goal.MINIMIZE)


def test_median_rule_compares_at_the_same_epoch() -> None:
    """After epoch 3 the finished trials' averages over 3 epochs count, and a trial that finished after
    1 epoch (the trainer's own early stopping) counts with its one epoch."""
    done = [[0.4, 0.6, 0.9], [0.5, 0.7, 0.8], [0.9]]  # averages at 3: 0.633, 0.667, 0.9
    assert should_stop([0.5, 0.6, 0.66], done, MEDIAN, Goal.MAXIMIZE)
    assert not should_stop([0.5, 0.6, 0.67], done, MEDIAN, Goal.MAXIMIZE)


def test_median_rule_skips_missing_values() -> None:
    done = [[None, 0.6], [0.5, None], [None, None], [0.7, 0.7]]  # the third has no value: 3 averages
    assert should_stop([0.5, 0.55], done, MEDIAN, Goal.MAXIMIZE)  # median of 0.6, 0.5, 0.7
    assert should_stop([None, None], done, MEDIAN, Goal.MAXIMIZE), "a diverged trial is behind any"
    assert not should_stop([None, 0.65], done, MEDIAN, Goal.MAXIMIZE)


# ------------------------------------------------------------------------------------------- ranking


def _trial(index: int, phase: str, objective: float | None = None) -> TrialStatus:
    return TrialStatus(index=index, name=f"s-{index}", parameters={}, phase=phase, objective=objective)


TRIALS = [
    _trial(0, "Succeeded", 0.8),
    _trial(1, "Failed"),
    _trial(2, "Stopped", 0.95),
    _trial(3, "Succeeded", 0.9),
    _trial(4, "Succeeded", 0.9),
    _trial(5, "Running", 0.99),
    _trial(6, "Succeeded"),
    _trial(7, "Pending"),
]


def test_best_is_the_succeeded_trial_with_the_best_objective() -> None:
    found = best(TRIALS, Objective(metric="valAccuracy"))
    assert found is not None and found.index == 3  # 3 and 4 tie: the first wins
    lowest = best(TRIALS, Objective(metric="valLoss"))
    assert lowest is not None and lowest.index == 0
    assert best([_trial(0, "Failed"), _trial(1, "Stopped", 0.5)], Objective(metric="valAccuracy")) is None


def test_tally() -> None:
    counts = tally(TRIALS)
    assert (counts.finished, counts.running, counts.failed) == (6, 2, 1)
    assert TrialPhase.STOPPED.value == "Stopped"
