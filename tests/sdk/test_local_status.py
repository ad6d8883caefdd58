"""Pure helpers of the local backend and the client: status folding, selectors, paths, fine-tuning jobs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from transferjob import (
    EpochMetrics,
    Location,
    Mode,
    Phase,
    SpecError,
    TestMetrics,
    TransferJob,
    TransferJobStatus,
)
from transferjob.backends.base import default_generate_name, generate_name, matches_selector
from transferjob.backends.local import local_path
from transferjob.backends.status import apply_event, failure
from transferjob.client import fine_tuning_job
from transferjob.constants import HISTORY_LIMIT
from transferjob.models import ModelArtifacts, PVCSource
from transferjob.progress import EpochEnded, Failed, Finished, Started

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_status_follows_a_run_like_the_operator_writes_it() -> None:
    s = apply_event(
        TransferJobStatus(phase=Phase.PENDING), Started(mode="FeatureExtraction", base="B", epochs=2), NOW
    )
    assert (s.phase, s.epochs, s.start_time) == (Phase.RUNNING, 2, NOW)
    for epoch in (1, 2):
        s = apply_event(s, EpochEnded(epochs=2, metrics=EpochMetrics(epoch=epoch, loss=1 / epoch)), NOW)
    assert [h.epoch for h in s.history] == [1, 2] and s.epoch == 2 and s.metrics and s.metrics.epoch == 2
    done = Finished(
        epochs_run=2,
        best_epoch=1,
        test=TestMetrics(loss=0.2, accuracy=0.9),
        model=ModelArtifacts(uri="/o/m.keras"),
    )
    s = apply_event(s, done, NOW)
    assert (s.phase, s.best_epoch, s.test and s.test.accuracy, s.model and s.model.uri) == (
        Phase.SUCCEEDED,
        1,
        0.9,
        "/o/m.keras",
    )
    assert {c.type: c.status for c in s.conditions} == {"Running": "False", "Succeeded": "True"}


def test_repeated_epochs_replace_history_and_history_is_bounded() -> None:
    s = TransferJobStatus()
    for epoch in [1, 2, 3, 4, 5, 3]:  # a retry resumes from the checkpoint of epoch 2
        s = apply_event(s, EpochEnded(epochs=999, metrics=EpochMetrics(epoch=epoch)), NOW)
    assert [h.epoch for h in s.history] == [1, 2, 3]
    s = TransferJobStatus()
    for epoch in range(1, HISTORY_LIMIT + 11):
        s = apply_event(s, EpochEnded(epochs=999, metrics=EpochMetrics(epoch=epoch)), NOW)
    assert len(s.history) == HISTORY_LIMIT and s.history[0].epoch == 11


def test_failure_reason_and_message() -> None:
    s = apply_event(TransferJobStatus(), Failed(reason="InvalidData", message="no images in val/"), NOW)
    assert s.phase is Phase.FAILED and failure(s) == ("InvalidData", "no images in val/")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, True),
        ("team=vision", True),
        ("team==vision,stage!=prod", True),
        ("team=nlp", False),
        ("team", True),
        ("!team", False),
        ("owner", False),
        ("stage in (dev, test)", True),
        ("stage notin (dev)", False),
        ("team=vision,stage in (prod)", False),
    ],
)
def test_label_selectors(selector: str | None, expected: bool) -> None:
    assert matches_selector({"team": "vision", "stage": "dev"}, selector) is expected


def test_bad_selector_is_an_error() -> None:
    with pytest.raises(ValueError, match="invalid label selector"):
        matches_selector({}, "team=vision,=x")


def test_local_paths_and_the_fields_they_name() -> None:
    assert str(local_path(Location(host_path="/d"), "spec.data.source")) == "/d"
    assert str(local_path(Location(uri="file:///d/x"), "spec.data.source")) == "/d/x"
    with pytest.raises(SpecError, match=r"spec\.data\.source\.pvc: a PersistentVolumeClaim exists only"):
        local_path(Location(pvc=PVCSource(claim_name="datasets")), "spec.data.source")
    with pytest.raises(SpecError, match=r"spec\.output\.location\.uri: .*gs://b"):
        local_path(Location(uri="gs://b/x"), "spec.output.location")


def test_generated_names_are_valid_dns_labels(make_job: Callable[..., TransferJob]) -> None:
    prefix = default_generate_name(make_job())
    assert prefix == "mobilenetv2-fe-"
    name = generate_name(prefix)
    assert name.startswith(prefix) and len(name) == len(prefix) + 5
    TransferJob.model_validate({"metadata": {"name": name}, "spec": make_job().spec.to_dict()})


def test_fine_tuning_job_continues_the_first_one(make_job: Callable[..., TransferJob]) -> None:
    first = make_job(name="features")
    job = fine_tuning_job(first, {"fromJob": "features"}, epochs=4)
    spec = job.spec
    assert job.metadata.name == "features-finetune"
    assert (spec.mode, spec.model.from_job, spec.model.from_model) == (Mode.FINE_TUNING, "features", None)
    # FineTuning defaults are resolved again, not inherited from FeatureExtraction.
    assert (spec.training.epochs, spec.training.learning_rate, spec.model.fine_tune_at) == (
        4,
        1e-5,
        "block_13_expand",
    )
    assert spec.data == first.spec.data
    assert spec.output.location.host_path == f"{first.spec.output.location.host_path}-finetune"
    local = fine_tuning_job(first, {"fromModel": "/o/model.keras"}, name="ft", fine_tune_at=100)
    assert (local.metadata.name, local.spec.model.from_model, local.spec.model.fine_tune_at) == (
        "ft",
        "/o/model.keras",
        100,
    )


def test_fine_tuning_output_on_a_pvc_goes_to_a_sibling_folder(make_job: Callable[..., TransferJob]) -> None:
    first = make_job(name="f", output={"location": {"pvc": {"claimName": "models", "subPath": "cats/fe"}}})
    job = fine_tuning_job(first, {"fromJob": "f"})
    assert job.spec.output.location.pvc == PVCSource(claim_name="models", sub_path="cats/fe-finetune")
