"""The progress protocol on the wire: one `transferjob.progress` event per stdout line.

The trainer's stdout carries nothing else (the CLI points file descriptor 1 at stderr for TensorFlow's
and Keras' chatter and keeps a private handle for events), and each line is flushed at once so the
operator and the local backend see epochs as they end. The final event also goes to the termination-log
file, which survives a missed log line. Notes for people (`log`) go to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from transferjob.constants import TERMINATION_MESSAGE_PATH
from transferjob.progress import (
    EpochEnded,
    Failed,
    Finished,
    PhaseChanged,
    Started,
    StepName,
    encode,
    termination_message,
)

Event = Started | PhaseChanged | EpochEnded | Finished | Failed


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
