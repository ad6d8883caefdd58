"""Progress inside a step: the trainer's `progress` events become `.status.progress` and watch events.

The figures a person reads are a percentage and whole seconds; the status carries them only while the job
is Running and only for the step under way (a stale "features 80%" during training would be a lie).
"""

from __future__ import annotations

import datetime as dt

from transferjob.client import EpochCompleted, StepAdvanced, format_step, progress_events
from transferjob.models import EpochMetrics, Phase, StepProgressStatus, TransferJobStatus, parse_spec
from transferjob.progress import EpochEnded, PhaseChanged, Started, StepProgress, decode, encode
from transferjob.status import Progress, Verdict, job_status

SPEC = parse_spec({"data": {"source": {"hostPath": "/d"}}, "output": {"location": {"hostPath": "/o"}}})
NOW = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)


def status_of(events: list, phase: Phase = Phase.RUNNING) -> TransferJobStatus:
    return job_status(Progress.of(events), Verdict(phase), SPEC, None, NOW)


def test_progress_event_round_trips_on_the_wire() -> None:
    event = StepProgress(
        step="training", done=320, total=1000, epoch=2, images_per_second=80.0, remaining_seconds=8.5
    )
    assert decode(encode(event)) == event
    assert '"event":"progress"' in encode(event) and '"remainingSeconds":8.5' in encode(event)


def test_status_shows_the_step_under_way_in_percent_and_whole_seconds() -> None:
    started = Started(mode="FineTuning", base="VGG16", epochs=3)
    training = PhaseChanged(phase="training", message="epochs 1-3")
    step = StepProgress(
        step="training", done=250, total=1000, epoch=2, images_per_second=83.33, remaining_seconds=99.6
    )
    status = status_of([started, training, step])
    assert status.progress == StepProgressStatus(
        step="training", percent=25.0, epoch=2, images_per_second=83.3, remaining_seconds=100
    )
    epoch_end = EpochEnded(epochs=3, metrics=EpochMetrics(epoch=2, loss=0.5))
    assert status_of([started, training, step, epoch_end]).progress is not None  # the step goes on
    evaluating = PhaseChanged(phase="evaluating")
    assert status_of([started, training, step, evaluating]).progress is None  # that step is over
    assert status_of([started, training, step], Phase.SUCCEEDED).progress is None


def test_watch_reports_progress_when_it_changes() -> None:
    step = StepProgressStatus(step="features", percent=40.0, images_per_second=120.0, remaining_seconds=15)
    before = TransferJobStatus(phase=Phase.RUNNING)
    after = TransferJobStatus(phase=Phase.RUNNING, progress=step)
    assert progress_events("j", before, after, 0) == [StepAdvanced("j", step)]
    assert progress_events("j", after, after, 0) == []
    with_epoch = after.model_copy(update={"metrics": EpochMetrics(epoch=1, loss=0.1)})
    events = progress_events("j", before, with_epoch, 0)
    assert isinstance(events[0], EpochCompleted) and isinstance(events[1], StepAdvanced)
    assert format_step(step) == "features: 40% (120 img/s, 15 s left)"
    assert format_step(StepProgressStatus(step="training", percent=5.5, epoch=3)) == "training epoch 3: 5.5%"
