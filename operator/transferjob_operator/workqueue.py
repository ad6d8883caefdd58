"""A work queue of keys on an asyncio loop: when to step a key, never what a step does.

The queueing half of the reconciler, the way kopf keeps queueing apart from processing: this module
knows nothing of TransferJobs, Jobs or the API server. Its caller gives it a `step(key)` coroutine and
wakes keys; the queue guarantees

* **one step per key at a time**: a key is never stepped by two workers at once; a wake-up during
  its step queues it again once the step is over (however many wake-ups came, one more step);
* **coalescing**: a key already queued is not queued twice, and a key is stepped at most once per
  `interval`; a wake-up inside the interval becomes a timer at its end. A key's first step runs at
  once;
* **timers**: `wake_in(key, delay)` wakes a key later; of several, the earliest counts;
* **pause**: `pause()` drops every queued key, pending wake-up and timer (steps in flight finish);
  nothing is stepped until `resume()`;
* **one thread**: the queue, its timers and its bookkeeping belong to the loop's thread (asyncio's
  queue and timer heap are not thread-safe). `wake` from another thread is handed over to the loop,
  and `hand_over` does the same for the caller's own methods.

A key has bookkeeping (its last step, its timer) only from its first wake-up until `forget(key)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


class _Slot:
    """What the queue remembers of one key between its steps."""

    __slots__ = ("last_step", "timer")

    def __init__(self) -> None:
        #: When the key's last step ended (monotonic); -inf: never stepped, the first step runs at once.
        self.last_step = float("-inf")
        self.timer: asyncio.TimerHandle | None = None


class WorkQueue(Generic[K]):
    """Keys waiting for `step`, served by `workers` asyncio tasks; see the module docstring."""

    def __init__(
        self,
        step: Callable[[K], Awaitable[None]],
        interval: float = 1.0,
        workers: int = 1,
        name: str = "workqueue",
    ) -> None:
        self.interval = interval
        self.active = True
        self._step = step
        self._n_workers = workers
        self._name = name
        self._slots: dict[K, _Slot] = {}
        self._queue: asyncio.Queue[K] | None = None
        self._queued: set[K] = set()
        self._running: set[K] = set()
        self._again: set[K] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the workers on the running loop, which from now on owns the queue."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self._name}-{i}") for i in range(self._n_workers)
        ]

    async def stop(self) -> None:
        """Cancel the workers (a step in flight is cancelled too) and drop all pending work."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.pause()

    def pause(self) -> None:
        """Drop every queued key, pending wake-up and timer; wake-ups are ignored until `resume`."""
        self.active = False
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        self._slots.clear()
        self._queued.clear()
        self._again.clear()
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()

    def resume(self) -> None:
        self.active = True

    def hand_over(self, method: Callable[..., None], *args: Any) -> bool:
        """Called from another thread than the loop's: schedule `method(*args)` on the loop, say so.

        The caller's method starts with `if queue.hand_over(self.method, arg): return`, so that it
        only ever runs on the loop's thread. Before `start` every thread counts as the loop's.
        """
        if self._loop is None or threading.get_ident() == self._thread:
            return False
        with contextlib.suppress(RuntimeError):  # the loop is closed: the program is exiting
            self._loop.call_soon_threadsafe(method, *args)
        return True

    # ------------------------------------------------------------------------------------------ keys

    def wake(self, key: K) -> None:
        """Step `key` now, or once its interval since the last step has passed; thread-safe."""
        if self.hand_over(self.wake, key) or not self.active or self._queue is None:
            return
        if key in self._running:
            self._again.add(key)
            return
        if key in self._queued:
            return
        slot = self._slots.setdefault(key, _Slot())
        wait = slot.last_step + self.interval - time.monotonic()
        if wait > 0:
            self.wake_in(key, wait)
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def wake_in(self, key: K, delay: float) -> None:
        """Wake `key` `delay` seconds from now, unless an earlier wake-up is already set (loop only)."""
        if not self.active or self._loop is None:
            return
        slot = self._slots.setdefault(key, _Slot())
        when = self._loop.time() + delay
        timer = slot.timer
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        slot.timer = self._loop.call_at(when, self._timer_fired, key, slot)

    def forget(self, key: K) -> None:
        """Drop the key's timer, pending wake-ups and bookkeeping; a later wake starts afresh."""
        slot = self._slots.pop(key, None)
        if slot is not None and slot.timer is not None:
            slot.timer.cancel()
        self._again.discard(key)

    def _timer_fired(self, key: K, slot: _Slot) -> None:
        slot.timer = None
        if self._slots.get(key) is slot:
            self.wake(key)

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if not self.active:
                continue
            slot = self._slots.get(key)
            self._running.add(key)
            try:
                await self._step(key)
            except Exception:  # the step is the caller's to make robust; a worker must not die of it
                log.exception("%s: step of %r failed", self._name, key)
            finally:
                self._running.discard(key)
            if slot is not None and self._slots.get(key) is slot:
                slot.last_step = time.monotonic()
            if key in self._again:
                self._again.discard(key)
                self.wake(key)
