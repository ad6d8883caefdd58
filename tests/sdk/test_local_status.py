"""Pure helpers of the local backend and the client: local status, selectors, paths, fine-tuning jobs."""

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
from transferjob.backends.localstatus import AttemptEnd, LocalStatus, Outcome
from transferjob.client import fine_tuning_job
from transferjob.constants import EXIT_PERMANENT, HISTORY_LIMIT
from transferjob.models import ModelArtifacts, PVCSource, TransferJobSpec
from transferjob.progress import EpochEnded, Failed, Finished, Started, encode, termination_message
from transferjob.status import Progress, failure

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
LATER = NOW + dt.timedelta(minutes=5)
SPEC = {"data": {"source": {"hostPath": "/d"}}, "output": {"location": {"hostPath": "/o"}}}


def _local(backoff_limit: int = 3, deadline: int | None = None) -> LocalStatus:
    policy = {"backoffLimit": backoff_limit, "activeDeadlineSeconds": deadline}
    spec = TransferJobSpec.model_validate({**SPEC, "runPolicy": policy})
    return LocalStatus(spec, TransferJobStatus(phase=Phase.PENDING, epochs=2, observed_generation=1))


def _conds(status: TransferJobStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in status.conditions}


def test_status_follows_a_run_like_the_operator_writes_it() -> None:
    local = _local()
    local.started(NOW)
    assert local.status.phase is Phase.RUNNING and local.status.start_time == NOW
    assert _conds(local.status)["Running"] == (
        "True",
        "Running",
        "the trainer process is running (attempt 1)",
    )
    assert local.line(encode(Started(mode="FeatureExtraction", base="B", epochs=2)), NOW)
    assert not local.line("Epoch 1/2 - loss: 0.5", NOW)
    assert _conds(local.status)["Running"] == ("True", "Running", "training FeatureExtraction on B")
    for epoch in (1, 2):
        local.line(encode(EpochEnded(epochs=2, metrics=EpochMetrics(epoch=epoch, loss=1 / epoch))), NOW)
    s = local.status
    assert [h.epoch for h in s.history] == [1, 2] and s.epoch == 2 and s.metrics and s.metrics.epoch == 2
    done = Finished(
        epochs_run=2,
        best_epoch=1,
        test=TestMetrics(loss=0.2, accuracy=0.9),
        model=ModelArtifacts(uri="/o/m.keras"),
    )
    local.line(encode(done), NOW)
    assert local.status.phase is Phase.RUNNING  # the outcome waits for the exit code
    assert local.ended(AttemptEnd(0, termination_message(done)), LATER) is Outcome.SUCCEEDED
    s = local.status
    assert (s.phase, s.best_epoch, s.test and s.test.accuracy, s.model and s.model.uri) == (
        Phase.SUCCEEDED,
        1,
        0.9,
        "/o/m.keras",
    )
    assert s.completion_time == LATER
    assert _conds(s) == {
        "Running": ("False", "NotRunning", ""),
        "Succeeded": (
            "True",
            "Succeeded",
            "test accuracy 0.9000 after 2 epochs (best epoch 1) model at /o/m.keras",
        ),
    }


def test_repeated_epochs_replace_history_and_history_is_bounded() -> None:
    """Epochs are keyed by number, as on the operator, where a log may be read twice."""
    progress = Progress.of(
        EpochEnded(epochs=999, metrics=EpochMetrics(epoch=e, loss=float(i)))
        for i, e in enumerate([1, 2, 3, 3])
    )
    assert [(h.epoch, h.loss) for h in progress.recent_history()] == [(1, 0.0), (2, 1.0), (3, 3.0)]
    progress = Progress.of(
        EpochEnded(epochs=999, metrics=EpochMetrics(epoch=epoch)) for epoch in range(1, HISTORY_LIMIT + 11)
    )
    history = progress.recent_history()
    assert len(history) == HISTORY_LIMIT and history[0].epoch == 11


def test_permanent_failure_keeps_the_trainers_reason_and_message() -> None:
    local = _local()
    local.started(NOW)
    invalid = Failed(reason="InvalidData", message="no images in val/", permanent=True)
    local.line(encode(invalid), NOW)
    assert local.ended(AttemptEnd(EXIT_PERMANENT), NOW) is Outcome.FAILED
    assert local.status.phase is Phase.FAILED and failure(local.status) == (
        "InvalidData",
        "no images in val/",
    )
    assert local.status.restarts is None


def test_retries_then_backoff_limit_exceeded() -> None:
    local = _local(backoff_limit=1)
    local.started(NOW)
    local.line(encode(Failed(reason="TrainingError", message="loss is NaN")), NOW)
    assert local.ended(AttemptEnd(1), NOW) is Outcome.RETRY
    assert local.status.phase is Phase.PENDING and local.status.restarts == 1
    assert _conds(local.status)["Running"] == ("False", "NotRunning", "")
    assert local.last_exit == "TrainingError: loss is NaN"
    local.started(NOW)
    assert local.ended(AttemptEnd(3, last_lines=("Segmentation fault",)), NOW) is Outcome.FAILED
    assert local.status.restarts == 1
    assert failure(local.status) == (
        "BackoffLimitExceeded",
        "the trainer exited with code 3: Segmentation fault (after 2 attempts)",
    )


def test_deadline_wins_over_what_the_trainer_said() -> None:
    local = _local(deadline=5)
    local.started(NOW)
    local.line(encode(Failed(reason="Interrupted", message="terminated by SIGTERM")), NOW)
    assert local.ended(AttemptEnd(-9, deadline_hit=True), NOW) is Outcome.FAILED
    assert failure(local.status) == ("DeadlineExceeded", "the job ran longer than 5s")


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
    # An object store is the trainer's to read and write, with the environment's credentials.
    assert local_path(Location(uri="gs://b/x"), "spec.output.location") == "gs://b/x"


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
