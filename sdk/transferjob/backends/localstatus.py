"""The local runner's facts -> a `Verdict` for `transferjob.status.job_status`. Pure, no I/O.

On a cluster the Job controller decides whether a failed pod is retried and the operator reads that
from the Job and its pods (`transferjob_operator.status`). Locally the runner plays both parts, and
`LocalStatus` is its pure half: it folds the trainer's lines into a `Progress`, decides after each
attempt whether the job succeeded, failed for good or is retried (`runPolicy.backoffLimit`, the
permanent exit code, the deadline), and asks `job_status` for the status, so a local job's status
carries the same phases, conditions and words as a cluster job's. `localrunner` owns the processes,
the files and the clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum

from transferjob.constants import EXIT_PERMANENT
from transferjob.models import Phase, TransferJobSpec, TransferJobStatus
from transferjob.progress import Failed, Finished
from transferjob.status import Progress, Verdict, job_status


class Outcome(Enum):
    """What happens after a trainer attempt ended."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RETRY = "Retry"


@dataclass(frozen=True)
class AttemptEnd:
    """How one trainer process ended, as the runner saw it."""

    exit_code: int
    #: The termination log's text: the final event, for a run whose last stdout line was lost.
    termination: str = ""
    #: The last lines of output, for a crash that printed no final event.
    last_lines: tuple[str, ...] = ()
    deadline_hit: bool = False


class LocalStatus:
    """A local job's status over its trainer attempts."""

    def __init__(self, spec: TransferJobSpec, status: TransferJobStatus) -> None:
        self.spec = spec
        self.status = status
        self.progress = Progress()
        self.attempts = 0
        #: Failed attempts that a new attempt replaced (a Job's failed pods, less a last one not retried).
        self.restarts = 0
        self._running: tuple[str, str] = ("Running", "the trainer process is running")
        self._final: Finished | Failed | None = None
        #: Why the last attempt ended, for the runner's Restarting event.
        self.last_exit = ""

    def _update(self, verdict: Verdict, now: dt.datetime) -> None:
        self.status = job_status(
            self.progress,
            verdict,
            self.spec,
            self.status,
            now,
            self.status.observed_generation,
            start_time=self.status.start_time or now,
            restarts=self.restarts,
        )

    def started(self, now: dt.datetime) -> None:
        """A trainer process started: the job runs (as a Job's pod that runs before the trainer speaks)."""
        self.attempts += 1
        self._final = None
        self._running = ("Running", f"the trainer process is running (attempt {self.attempts})")
        self._update(Verdict(Phase.RUNNING, {"Running": self._running}), now)

    def line(self, text: str | bytes, now: dt.datetime) -> bool:
        """Fold one output line in; whether it was a protocol event (and the status may have changed)."""
        event = self.progress.apply_line(text)
        if event is None:
            return False
        if isinstance(event, Finished | Failed):
            self._final = event  # the outcome waits for the exit code, as a Job waits for the pod
        else:
            self._update(Verdict(Phase.RUNNING, {"Running": self._running}), now)
        return True

    def ended(self, end: AttemptEnd, now: dt.datetime) -> Outcome:
        """The attempt's process exited: success, failure for good, or another attempt."""
        if self._final is None and end.termination:
            self.line(end.termination, now)
        final = self._final
        if isinstance(final, Finished) and end.exit_code == 0:
            self._update(Verdict(Phase.SUCCEEDED), now)
            return Outcome.SUCCEEDED
        policy = self.spec.run_policy
        if end.deadline_hit:
            message = f"the job ran longer than {policy.active_deadline_seconds}s"
            return self.fail("DeadlineExceeded", message, now)
        failed = final if isinstance(final, Failed) else None  # a `finished` with an exit code != 0: a crash
        detail = f": {end.last_lines[-1]}" if end.last_lines else ""
        exited = f"the trainer exited with code {end.exit_code}{detail}"
        self.last_exit = f"{failed.reason}: {failed.message}" if failed is not None else exited
        permanent = (failed is not None and failed.permanent) or end.exit_code == EXIT_PERMANENT
        exhausted = not permanent and self.attempts > policy.backoff_limit
        if permanent or exhausted:
            if failed is not None:
                self._update(Verdict(Phase.FAILED, retries_exhausted=exhausted), now)
                return Outcome.FAILED
            if exhausted:
                return self.fail("BackoffLimitExceeded", f"{exited} (after {self.attempts} attempts)", now)
            return self.fail("TrainerExited", exited, now)
        self.restarts += 1
        self._update(Verdict(Phase.PENDING), now)
        return Outcome.RETRY

    def fail(self, reason: str, message: str, now: dt.datetime) -> Outcome:
        """A failure the runner itself knows of (deadline, crash, stop): the trainer did not explain it."""
        self._update(Verdict(Phase.FAILED, {"Failed": (reason, message)}), now)
        return Outcome.FAILED
