"""What the trainer said: progress events folded into the metrics part of `.status`. Pure, no I/O.

The same events may arrive twice (a log stream re-read after a reconnect or an operator restart, then
the termination message): applying them is idempotent, epochs are keyed by number, and the final
`finished` event, when present, is the authority on the history and the best epoch.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from transferjob.constants import HISTORY_LIMIT
from transferjob.models import EpochMetrics, ModelArtifacts, TestMetrics
from transferjob.progress import EpochEnded, Failed, Finished, PhaseChanged, Started, decode

Event: TypeAlias = Started | PhaseChanged | EpochEnded | Finished | Failed


@dataclass
class Progress:
    """The metrics known so far for one TransferJob."""

    epochs: int | None = None
    trainer_phase: str | None = None
    history: dict[int, EpochMetrics] = field(default_factory=dict)
    best_epoch: int | None = None
    test: TestMetrics | None = None
    model: ModelArtifacts | None = None
    failure: Failed | None = None

    @property
    def epoch(self) -> int | None:
        return max(self.history) if self.history else None

    @property
    def latest(self) -> EpochMetrics | None:
        return self.history[max(self.history)] if self.history else None

    def recent_history(self, limit: int = HISTORY_LIMIT) -> list[EpochMetrics]:
        """The newest `limit` epochs in order: `.status.history` is bounded, the output has them all."""
        return [self.history[e] for e in sorted(self.history)[-limit:]]

    def apply(self, event: Event) -> None:
        """Fold one event in; applying the same event again changes nothing."""
        if isinstance(event, Started):
            self.epochs = event.epochs
        elif isinstance(event, PhaseChanged):
            self.trainer_phase = event.phase
        elif isinstance(event, EpochEnded):
            self.epochs = event.epochs
            self.history[event.metrics.epoch] = event.metrics
        elif isinstance(event, Finished):
            for metrics in event.history:
                self.history[metrics.epoch] = metrics
            self.best_epoch = event.best_epoch
            self.test = event.test
            self.model = event.model
            self.failure = None
        elif isinstance(event, Failed):
            self.failure = event

    def apply_line(self, line: str | bytes) -> bool:
        """Apply a log line if it is a protocol event; say whether it was."""
        event = decode(line)
        if event is None:
            return False
        self.apply(event)
        return True

    def copy(self) -> Progress:
        """An independent copy: its history can be extended without touching this one's."""
        return dataclasses.replace(self, history=dict(self.history))

    @property
    def finished(self) -> bool:
        return self.test is not None


def best_epoch(history: list[EpochMetrics], monitor: str, min_delta: float = 0.0) -> int | None:
    """The epoch early stopping would keep so far: lowest val_loss or highest val_accuracy.

    Like Keras' EarlyStopping, a later epoch only counts as better when it improves by more than
    `min_delta`, so the value matches what the trainer restores at the end.
    """
    best: tuple[int, float] | None = None
    for metrics in sorted(history, key=lambda m: m.epoch):
        value = getattr(metrics, "val_accuracy" if monitor == "val_accuracy" else "val_loss")
        if value is None:
            continue
        score = value if monitor == "val_accuracy" else -value
        if best is None or score - best[1] > min_delta:
            best = (metrics.epoch, score)
    return best[0] if best else None


class SharedProgress:
    """A `Progress` written by a log-following thread and read by the reconcile loop.

    `version` counts the events applied; `on_change` (called in the writer's thread) tells the reader
    that there is something new, or that the writer stopped (`poke`).
    """

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._progress = Progress()
        self.version = 0
        self._on_change = on_change

    def poke(self) -> None:
        """Tell the reader to look, without a new event (a log stream ended)."""
        if self._on_change is not None:
            self._on_change()

    def apply_line(self, line: str | bytes) -> None:
        event = decode(line)
        if event is None:
            return
        self.apply(event)

    def apply(self, event: Event) -> None:
        with self._lock:
            self._progress.apply(event)
            self.version += 1
        self.poke()

    def snapshot(self) -> Progress:
        """A copy that the caller may read without holding the lock."""
        with self._lock:
            return self._progress.copy()
