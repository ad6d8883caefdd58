"""One trainer, two backends, one status: recorded event sequences through the operator and the local runner.

Each folder under `tests/data/events/` is one job: `attempt-<n>-exit-<code>.jsonl` holds the protocol
lines one trainer attempt printed and the exit code it ended with (lines encoded from the real event
models). The operator path gets them as it does on a cluster: log lines through `SharedProgress` while
the pod runs, the final event again in the pod's termination message, and a Job and pods shaped as the
API server returns them (a Complete or Failed condition, terminated containers with the exit code).
The local path gets them as `localrunner` does, through `LocalStatus`. After every line, between
attempts and at the end, both must show the same phase, conditions (type, status, reason, message)
and metrics. The only words allowed to differ are the runner's own for a trainer that has not printed
anything yet ("pod x is running" / "the trainer process is running"), so those moments are not compared.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import cond, make_job, make_pod, make_tj, terminated
from transferjob.backends.localstatus import AttemptEnd, LocalStatus, Outcome
from transferjob.models import Phase, TransferJob, TransferJobStatus
from transferjob.progress import Failed, Finished, decode, termination_message
from transferjob.types import Json
from transferjob_operator.status import status_from_job_and_pods
from transferjob_operator.tracking import SharedProgress

EVENTS = Path(__file__).parent.parent / "data" / "events"
START = dt.datetime(2025, 1, 1, 0, 0, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Attempt:
    lines: list[str]
    exit_code: int

    @property
    def final(self) -> Finished | Failed | None:
        event = decode(self.lines[-1])
        return event if isinstance(event, Finished | Failed) else None


def recorded(scenario: str) -> list[Attempt]:
    files = sorted((EVENTS / scenario).glob("attempt-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))
    return [Attempt(f.read_text().splitlines(), int(f.stem.rsplit("-", 1)[1])) for f in files]


def view(status: TransferJobStatus) -> Json:
    """What a user reads and a parity check compares: no timestamps, which each runner takes itself."""
    fields = {"epoch", "epochs", "metrics", "history", "best_epoch", "test", "model", "restarts"}
    return {
        "phase": status.phase,
        "conditions": [(c.type, c.status, c.reason, c.message) for c in status.conditions],
        **status.model_dump(include=fields),
    }


def tj_for(backoff_limit: int) -> TransferJob:
    return make_tj(
        {
            "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "digits"}}},
            "output": {"location": {"pvc": {"claimName": "models", "subPath": "digits-fe"}}},
            "runPolicy": {"backoffLimit": backoff_limit},
        }
    )


class OnCluster:
    """The operator's view: one pod per attempt, the Job controller's verdict at the end."""

    def __init__(self, tj: TransferJob) -> None:
        self.tj = tj
        self.progress = SharedProgress()
        self.pods: list[Json] = []
        self.failed = 0

    def step(self, job: Json, now: dt.datetime) -> TransferJobStatus:
        status = status_from_job_and_pods(self.tj, job, self.pods, self.progress.snapshot(), now)
        self.tj = self.tj.model_copy(update={"status": status})  # the reconciler reads back what it wrote
        return status

    def job(self, conditions: list[Json] | None = None, **status: Any) -> Json:
        return make_job(conditions, startTime="2025-01-01T00:00:00Z", failed=self.failed, **status)

    def start(self, n: int) -> None:
        created = f"2025-01-01T00:0{n}:00Z"
        self.pods.append(make_pod(f"digits-{n}", "Running", created, {"running": {"startedAt": created}}))

    def end(self, attempt: Attempt, termination: str) -> None:
        reason = "Completed" if attempt.exit_code == 0 else "Error"
        self.pods[-1]["status"]["phase"] = "Succeeded" if attempt.exit_code == 0 else "Failed"
        self.pods[-1]["status"]["containerStatuses"][0]["state"] = terminated(
            attempt.exit_code, termination, reason
        )
        self.failed += attempt.exit_code != 0


def run_both(scenario: str, backoff_limit: int = 3) -> tuple[TransferJobStatus, TransferJobStatus]:
    """Feed a recorded job to both paths, comparing them all along; their final statuses."""
    tj = tj_for(backoff_limit)
    cluster = OnCluster(tj)
    local = LocalStatus(tj.spec, TransferJobStatus(phase=Phase.PENDING, epochs=5, observed_generation=1))
    now = START
    attempts = recorded(scenario)
    for n, attempt in enumerate(attempts, 1):
        cluster.start(n)
        local.started(now)
        for line in attempt.lines:
            now += dt.timedelta(seconds=1)
            cluster.progress.apply_line(line)
            local.line(line, now)
            if not isinstance(decode(line), Finished | Failed):
                assert view(cluster.step(cluster.job(active=1), now)) == view(local.status), line
        now += dt.timedelta(seconds=1)
        final = attempt.final
        termination = termination_message(final) if final is not None else ""
        cluster.end(attempt, termination)
        outcome = local.ended(AttemptEnd(attempt.exit_code, termination), now)
        if n < len(attempts):
            assert outcome is Outcome.RETRY
            # The Job controller has counted the failed pod and made the next one, still Pending.
            cluster.pods.append(make_pod(f"digits-{n + 1}-pending", "Pending", f"2025-01-01T00:0{n}:30Z"))
            gap = cluster.step(cluster.job(), now)
            cluster.pods.pop()
            assert view(gap) == view(local.status)
            assert gap.phase is Phase.PENDING
    last = attempts[-1]
    if last.exit_code == 0:
        job = cluster.job([cond("Complete")], completionTime="2025-01-01T00:09:30Z", succeeded=1)
    elif last.exit_code == 42:
        job = cluster.job([cond("Failed", "PodFailurePolicy", "Container trainer ... exit code 42 ...")])
    else:
        job = cluster.job(
            [cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]
        )
    on_cluster = cluster.step(job, now)
    assert view(on_cluster) == view(local.status)
    return on_cluster, local.status


def _conditions(status: TransferJobStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in status.conditions}


def test_success() -> None:
    status, _ = run_both("success")
    assert status.phase is Phase.SUCCEEDED
    assert _conditions(status) == {
        "Running": ("False", "NotRunning", ""),
        "Succeeded": (
            "True",
            "Succeeded",
            "test accuracy 0.9852 after 5 epochs (best epoch 5) model at /output/model.keras",
        ),
    }
    assert (status.epoch, status.epochs, status.best_epoch, status.restarts) == (5, 5, 5, None)


def test_early_stop_keeps_the_best_epoch() -> None:
    status, _ = run_both("early-stop")
    assert status.phase is Phase.SUCCEEDED
    assert (status.epoch, status.epochs, status.best_epoch) == (7, 20, 4)
    assert status.metrics is not None and status.metrics.epoch == 7
    assert _conditions(status)["Succeeded"][2].endswith(
        "after 7 epochs (best epoch 4) model at /output/model.keras"
    )


def test_invalid_data_fails_at_once_with_the_trainers_words() -> None:
    status, _ = run_both("invalid-data")
    assert status.phase is Phase.FAILED
    assert _conditions(status) == {
        "Failed": ("True", "InvalidData", "/data/train needs at least 2 class sub-folders, found 1 (5)"),
        "Running": ("False", "NotRunning", ""),
    }
    assert status.restarts is None and status.history == []


def test_interrupted_run_resumes_and_finishes() -> None:
    status, _ = run_both("interrupted-resumed")
    assert status.phase is Phase.SUCCEEDED and status.restarts == 1
    assert [m.epoch for m in status.history] == [1, 2, 3, 4, 5]
    assert "Failed" not in _conditions(status)


def test_retryable_failure_that_runs_out_of_retries() -> None:
    status, _ = run_both("retries-exhausted", backoff_limit=1)
    assert status.phase is Phase.FAILED and status.restarts == 1
    assert _conditions(status)["Failed"] == (
        "True",
        "BackoffLimitExceeded",
        "TrainingError: ResourceExhaustedError: OOM when allocating tensor (attempt 2)",
    )


@pytest.mark.parametrize("scenario", sorted(p.name for p in EVENTS.iterdir()))
def test_recordings_are_protocol_lines(scenario: str) -> None:
    for attempt in recorded(scenario):
        assert all(decode(line) is not None for line in attempt.lines)
        assert (attempt.final is not None) and (
            (attempt.exit_code == 0) == isinstance(attempt.final, Finished)
        )
