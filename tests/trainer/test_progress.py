"""Progress inside steps, through the trainer CLI: the image check, the feature pass, fine-tuning's epochs.

`TJ_PROGRESS_SECONDS=0` makes the trainer report after every update, so a small run shows every event
a long one would send every 10 s; counts must rise to the step's total and never pass it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from transferjob.progress import StepProgress

from .conftest import Digits, SourceModels, make_spec

pytestmark = pytest.mark.trainer


def _by_step(events: list[StepProgress]) -> dict[str, list[StepProgress]]:
    steps: dict[str, list[StepProgress]] = {}
    for event in events:
        steps.setdefault(event.step, []).append(event)
    return steps


def test_check_features_and_epochs_report_progress(
    digits: Digits, source_models: SourceModels, run_trainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TJ_PROGRESS_SECONDS", "0")
    model = {"base": str(source_models.pretrained), "head": {"dropout": 0.0}}
    fe = run_trainer(make_spec(digits.small_target, tmp_path / "fe", model=model, training={"epochs": 1}))
    started = fe.started
    n = started.train_images + started.val_images + started.test_images
    steps = _by_step(fe.of(StepProgress))
    assert set(steps) == {"loading", "features"}, steps.keys()
    for step, total in (("loading", n), ("features", n)):
        done = [e.done for e in steps[step]]
        assert done == sorted(done) and done[-1] == total and {e.total for e in steps[step]} == {total}
    assert all(e.images_per_second and e.remaining_seconds is not None for e in steps["features"])

    ft = run_trainer(
        make_spec(
            digits.small_target,
            tmp_path / "ft",
            mode="FineTuning",
            model={**model, "fineTuneAt": "conv3"},
            training={"epochs": 2, "earlyStopping": {"enabled": False}, "batchSize": 8},
        )
    )
    training = _by_step(ft.of(StepProgress))["training"]
    assert {e.epoch for e in training} == {1, 2}
    for epoch in (1, 2):
        done = [e.done for e in training if e.epoch == epoch]
        assert done == sorted(done) and done[-1] == ft.started.train_images
    assert training[0].remaining_seconds > training[-1].remaining_seconds  # the estimate counts down
    assert ft.rc == 0 and fe.rc == 0
