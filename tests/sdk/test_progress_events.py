"""Status diffs -> progress events: the pure core of `watch` and `wait`, tested without any backend."""

from __future__ import annotations

from transferjob import Condition, EpochMetrics, Phase, TransferJobStatus
from transferjob.client import EpochCompleted, PhaseChanged, progress_events


def m(epoch: int) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, loss=1 / epoch, val_loss=1.1 / epoch)


def status(phase: Phase, history: list[int], latest: int | None = None, **kw: object) -> TransferJobStatus:
    return TransferJobStatus(
        phase=phase,
        epochs=5,
        history=[m(e) for e in history],
        metrics=m(latest) if latest else (m(history[-1]) if history else None),
        **kw,
    )


def kinds(events: list) -> list[str]:
    return [f"epoch {e.epoch}" if isinstance(e, EpochCompleted) else e.phase.value for e in events]


def test_first_snapshot_reports_phase_then_every_epoch_so_far() -> None:
    events = progress_events("a", None, status(Phase.RUNNING, [1, 2]), last_epoch=0)
    assert kinds(events) == ["Running", "epoch 1", "epoch 2"]
    assert events[1].metrics.loss == 1.0 and events[1].epochs == 5


def test_only_new_epochs_and_no_phase_when_unchanged() -> None:
    before = status(Phase.RUNNING, [1, 2])
    events = progress_events("a", before, status(Phase.RUNNING, [1, 2, 3, 4]), last_epoch=2)
    assert kinds(events) == ["epoch 3", "epoch 4"]


def test_latest_metrics_ahead_of_history_counts_once() -> None:
    events = progress_events("a", None, status(Phase.RUNNING, [1], latest=2), last_epoch=0)
    assert kinds(events) == ["Running", "epoch 1", "epoch 2"]


def test_epochs_of_a_retry_that_starts_over_are_not_repeated() -> None:
    before = status(Phase.RUNNING, [1, 2, 3])
    events = progress_events("a", before, status(Phase.RUNNING, [1, 2]), last_epoch=3)
    assert events == []


def test_final_phase_comes_after_the_last_epochs() -> None:
    before = status(Phase.RUNNING, [1])
    after = status(Phase.SUCCEEDED, [1, 2, 3], best_epoch=2)
    events = progress_events("a", before, after, last_epoch=1)
    assert kinds(events) == ["epoch 2", "epoch 3", "Succeeded"]
    final = events[-1]
    assert isinstance(final, PhaseChanged) and final.finished and final.status.best_epoch == 2


def test_failure_carries_reason_and_message_of_the_failed_condition() -> None:
    failed = TransferJobStatus(
        phase=Phase.FAILED,
        conditions=[
            Condition(type="Running", status="False", reason="Other", message="x"),
            Condition(type="Failed", status="True", reason="InvalidData", message="val/ has no images"),
        ],
    )
    (event,) = progress_events("a", status(Phase.RUNNING, []), failed, last_epoch=0)
    assert isinstance(event, PhaseChanged)
    assert (event.phase, event.reason, event.message, event.finished) == (
        Phase.FAILED,
        "InvalidData",
        "val/ has no images",
        True,
    )
