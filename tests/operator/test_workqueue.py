"""The work queue on its own, with plain string keys and a toy step: when keys are stepped, never what.

The reconciler's guarantees rest on these (one writer per TransferJob, at most one status write per
interval, timers for time-driven outcomes, pause with peering); `test_reconciler.py` tests what the
reconciler builds on top.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable

from transferjob_operator.workqueue import WorkQueue

INTERVAL = 0.2


class Steps:
    """A toy step that records when each key was stepped and how many steps of a key overlapped."""

    def __init__(self, duration: float = 0.0, fail: frozenset[str] = frozenset()) -> None:
        self.duration = duration
        self.fail = fail
        self.started: dict[str, list[float]] = {}
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}

    async def __call__(self, key: str) -> None:
        self.started.setdefault(key, []).append(time.monotonic())
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.max_in_flight[key] = max(self.max_in_flight.get(key, 0), self.in_flight[key])
        try:
            await asyncio.sleep(self.duration)
            if key in self.fail:
                raise RuntimeError(f"step of {key} failed")
        finally:
            self.in_flight[key] -= 1

    def count(self, key: str) -> int:
        return len(self.started.get(key, []))


def run(
    test: Callable[[WorkQueue[str], Steps], Awaitable[None]],
    steps: Steps | None = None,
    workers: int = 4,
) -> None:
    async def main() -> None:
        recorder = steps or Steps()
        queue: WorkQueue[str] = WorkQueue(recorder, interval=INTERVAL, workers=workers, name="test")
        queue.start()
        try:
            await asyncio.wait_for(test(queue, recorder), timeout=20)
        finally:
            await queue.stop()

    asyncio.run(main())


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_first_wake_steps_at_once() -> None:
    async def scenario(q: WorkQueue[str], steps: Steps) -> None:
        woken = time.monotonic()
        q.wake("a")
        await until(lambda: steps.count("a") == 1)
        assert steps.started["a"][0] - woken < INTERVAL / 2

    run(scenario)


def test_wake_ups_coalesce_into_one_step_per_interval() -> None:
    async def scenario(q: WorkQueue[str], steps: Steps) -> None:
        q.wake("a")
        await until(lambda: steps.count("a") == 1)
        for _ in range(50):  # a chatty source of wake-ups
            q.wake("a")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        gaps = [b - a for a, b in itertools.pairwise(steps.started["a"])]
        assert 2 <= steps.count("a") <= 6
        assert all(gap >= INTERVAL - 0.01 for gap in gaps)

    run(scenario)


def test_one_step_per_key_at_a_time_and_one_more_after_wake_ups_during_it() -> None:
    async def scenario(q: WorkQueue[str], steps: Steps) -> None:
        q.wake("a")
        q.wake("b")
        await until(lambda: steps.in_flight.get("a") == 1)
        for _ in range(10):  # woken while its step runs: exactly one more step afterwards
            q.wake("a")
        await until(lambda: steps.count("a") == 2, timeout=5)
        await asyncio.sleep(3 * INTERVAL + 0.3)
        assert steps.count("a") == 2
        assert steps.max_in_flight == {"a": 1, "b": 1}
        # Two keys are stepped side by side: "b" started while "a" was still in its first step.
        assert steps.started["b"][0] < steps.started["a"][0] + 0.3

    run(scenario, Steps(duration=0.3))


def test_the_earliest_timer_counts_and_forget_cancels_it() -> None:
    async def scenario(q: WorkQueue[str], steps: Steps) -> None:
        set_at = time.monotonic()
        q.wake_in("a", 0.6)
        q.wake_in("a", 0.3)  # earlier: replaces the first
        q.wake_in("a", 5.0)  # later: ignored
        await until(lambda: steps.count("a") == 1)
        assert 0.25 <= steps.started["a"][0] - set_at < 0.55
        await asyncio.sleep(0.5)
        assert steps.count("a") == 1  # the replaced and the ignored timers never fire
        q.wake_in("b", 0.2)
        q.forget("b")
        await asyncio.sleep(0.4)
        assert steps.count("b") == 0

    run(scenario)


def test_pause_drops_queued_keys_and_timers_until_resume() -> None:
    async def scenario(q: WorkQueue[str], steps: Steps) -> None:
        q.wake("busy")
        await until(lambda: steps.in_flight.get("busy") == 1)
        for key in ("a", "b", "c"):  # one worker, busy: these wait in the queue
            q.wake(key)
        q.wake_in("d", 0.1)
        q.pause()
        q.wake("e")  # ignored while paused
        await asyncio.sleep(0.8)
        assert set(steps.started) == {"busy"}
        q.resume()
        q.wake("a")
        await until(lambda: steps.count("a") == 1)
        assert set(steps.started) == {"busy", "a"}

    run(scenario, Steps(duration=0.3), workers=1)


def test_wake_ups_from_other_threads_are_handed_to_the_loop() -> None:
    """asyncio's queue and timer heap are not thread-safe; a wake from a thread must reach the loop."""

    async def scenario(q: WorkQueue[str], steps: Steps) -> None:
        def from_thread(i: int) -> None:
            for _ in range(20):
                q.wake(f"t-{i}")

        threads = [threading.Thread(target=from_thread, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        await until(lambda: len(steps.started) == 8)
        assert sorted(steps.started) == [f"t-{i}" for i in range(8)]
        assert all(steps.count(key) <= 2 for key in steps.started)

    run(scenario)


def test_a_failing_step_does_not_stop_the_queue() -> None:
    async def scenario(q: WorkQueue[str], steps: Steps) -> None:
        q.wake("bad")
        await until(lambda: steps.count("bad") == 1)
        q.wake("good")
        q.wake("bad")  # still served, one interval after its failed step
        await until(lambda: steps.count("good") == 1 and steps.count("bad") == 2)

    run(scenario, Steps(fail=frozenset({"bad"})), workers=1)
