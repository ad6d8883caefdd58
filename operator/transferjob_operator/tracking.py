"""The trainer's progress events, shared between a log-following thread and the reconcile loop.

The fold itself (`Progress`: events -> metrics, idempotent) lives in the SDK, `transferjob.status`,
because the local backend folds the same events the same way; this module adds only the lock and the
wake-up that the operator's threads need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from transferjob.progress import decode
from transferjob.status import Event, Progress


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
