"""The progress protocol on the wire: one `transferjob.progress` event per stdout line.

The trainer's stdout carries nothing else (the CLI points file descriptor 1 at stderr for TensorFlow's
and Keras' chatter and keeps a private handle for events), and each line is flushed at once so the
operator and the local backend see epochs as they end. The final event also goes to the termination-log
file, which survives a missed log line. Notes for people (`log`) go to stderr.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from transferjob.constants import TERMINATION_MESSAGE_PATH
from transferjob.progress import (
    EpochEnded,
    Failed,
    Finished,
    PhaseChanged,
    Started,
    StepName,
    StepProgress,
    encode,
    termination_message,
)

Event = Started | PhaseChanged | StepProgress | EpochEnded | Finished | Failed

#: Seconds between two `progress` events of a step; `TJ_PROGRESS_SECONDS` overrides (0: every update).
PROGRESS_SECONDS = 10.0


def log(message: str) -> None:
    """Human-readable notes go to stderr; stdout carries only protocol events."""
    print(f"[trainer] {message}", file=sys.stderr, flush=True)


def default_termination_log() -> str:
    """`TJ_TERMINATION_LOG` when set (local runs, tests), else Kubernetes' path."""
    return os.environ.get("TJ_TERMINATION_LOG") or TERMINATION_MESSAGE_PATH


def write_termination_log(path: str | None, event: Finished | Failed) -> bool:
    """Write the final event where Kubernetes reads it; silently skip where we cannot write.

    Outside a pod `/dev/termination-log` does not exist and `/dev` is not writable: that is normal.
    """
    if not path:
        return False
    writable = (
        os.access(path, os.W_OK) if os.path.exists(path) else os.access(os.path.dirname(path) or ".", os.W_OK)
    )
    if not writable:
        return False
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(termination_message(event))
    except OSError:
        return False
    return True


class Reporter:
    """Prints events and remembers the epochs reported, for the final history."""

    def __init__(self, stream: TextIO, termination_log: str | None) -> None:
        self._stream = stream
        self._termination_log = termination_log
        self.final: Finished | Failed | None = None

    def emit(self, event: Event) -> None:
        self._stream.write(encode(event) + "\n")
        self._stream.flush()

    def phase(self, phase: StepName, message: str = "") -> None:
        self.emit(PhaseChanged(phase=phase, message=message))

    def finish(self, event: Finished | Failed) -> None:
        """The last line of a run: printed and written to the termination log."""
        self.final = event
        self.emit(event)
        write_termination_log(self._termination_log, event)


def progress_interval() -> float:
    """`TJ_PROGRESS_SECONDS`, else `PROGRESS_SECONDS`."""
    try:
        return max(0.0, float(os.environ.get("TJ_PROGRESS_SECONDS", PROGRESS_SECONDS)))
    except ValueError:
        return PROGRESS_SECONDS


class StepMeter:
    """Counts images through a long step and sends a `progress` event at most every `interval` seconds.

    A step of training spans `epochs_left` more epochs of `total` images after the current one, so the
    estimate of the remaining time covers the planned run (early stopping may end it sooner).
    """

    def __init__(
        self,
        emit: Callable[[StepProgress], None],
        step: StepName,
        total: int,
        *,
        epoch: int | None = None,
        epochs_left: int = 0,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit, self.step, self.total = emit, step, total
        self.epoch, self.epochs_left = epoch, epochs_left
        self.interval = progress_interval() if interval is None else interval
        self._clock = clock
        self.done = 0
        self._started = self._last = clock()

    def new_epoch(self, epoch: int, epochs_left: int) -> None:
        """Training moved on to `epoch` (from 1): the count starts again, the clock does not."""
        self.epoch, self.epochs_left, self.done = epoch, epochs_left, 0
        self._started = self._clock()

    def advance(self, images: int) -> None:
        """`images` more went through; report if `interval` has passed since the last report."""
        self.done = min(self.total, self.done + images)
        now = self._clock()
        if now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 and self.done else None
        left = self.total - self.done + self.epochs_left * self.total
        self._emit(
            StepProgress(
                step=self.step,
                done=self.done,
                total=self.total,
                epoch=self.epoch,
                images_per_second=rate,
                remaining_seconds=left / rate if rate else None,
            )
        )
