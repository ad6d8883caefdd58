"""The client on the local backend, end to end, with the scripted trainer (seconds, no TensorFlow).

Real processes, real files: the runner is detached, status.json is written by it, and a second client
(or a second Python process) finds the job again. The real trainer runs in test_trainer_local.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from transferjob import (
    BackendError,
    JobExistsError,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    JobTimeoutError,
    Mode,
    Phase,
    SpecError,
    SpecWarning,
    TransferJob,
    TransferJobClient,
)
from transferjob.client import EpochCompleted, PhaseChanged

MakeJob = Callable[..., TransferJob]


def test_submit_wait_get_returns_the_operator_shaped_status(
    local_client: TransferJobClient, make_job: MakeJob
) -> None:
    name = local_client.submit(make_job({"epochs": 3}, name="digits-fe"))
    assert name == "digits-fe"
    job = local_client.wait(name, timeout=60)
    status = job.status
    assert status is not None and status.phase is Phase.SUCCEEDED
    assert [m.epoch for m in status.history] == [1, 2, 3]
    assert status.best_epoch == 3 and status.test and status.test.accuracy == 0.95
    assert status.model and Path(status.model.uri).read_text() == "not really a model"
    assert status.start_time and status.completion_time
    assert local_client.get(name).status == status


def test_generated_names_and_duplicates(local_client: TransferJobClient, make_job: MakeJob) -> None:
    first = local_client.submit(make_job({"epochs": 1}))
    assert first.startswith("mobilenetv2-fe-")
    local_client.submit(make_job({"epochs": 1}), name="same")
    with pytest.raises(JobExistsError, match="'same' already exists"):
        local_client.submit(make_job({"epochs": 1}), name="same")


def test_watch_yields_each_epoch_once_in_order_then_the_outcome(
    local_client: TransferJobClient, make_job: MakeJob
) -> None:
    name = local_client.submit(make_job({"epochs": 4, "sleep": 0.3}))
    events = list(local_client.watch(name, timeout=60))
    epochs = [e.epoch for e in events if isinstance(e, EpochCompleted)]
    assert epochs == [1, 2, 3, 4]
    assert all(e.epochs == 4 for e in events if isinstance(e, EpochCompleted))
    final = events[-1]
    assert isinstance(final, PhaseChanged) and final.phase is Phase.SUCCEEDED and final.finished
    # A watch that starts after the end still tells the whole story.
    again = list(local_client.watch(name, timeout=10))
    assert [e.epoch for e in again if isinstance(e, EpochCompleted)] == [1, 2, 3, 4]


def test_jobs_outlive_the_client_and_its_process(tj_home: Path, make_job: MakeJob) -> None:
    job = make_job({"epochs": 2, "sleep": 0.5}, name="survivor")
    code = (
        "import sys; from transferjob import TransferJob, TransferJobClient; "
        "print(TransferJobClient('local').submit(TransferJob.from_yaml(sys.stdin.read())))"
    )
    started = subprocess.run(
        [sys.executable, "-c", code],
        input=job.to_yaml(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert started.stdout.strip() == "survivor"
    fresh = TransferJobClient("local")  # a new client in this process: the submitting one is gone
    assert [j.metadata.name for j in fresh.list()] == ["survivor"]
    assert fresh.wait("survivor", timeout=60).status.phase is Phase.SUCCEEDED


def test_retryable_failures_are_retried_up_to_backoff_limit(
    local_client: TransferJobClient, make_job: MakeJob
) -> None:
    job = make_job({"epochs": 2, "fail_attempts": 1}, runPolicy={"backoffLimit": 2})
    name = local_client.submit(job)
    final = local_client.wait(name, timeout=60)
    assert final.status and final.status.phase is Phase.SUCCEEDED and final.status.restarts == 1
    reasons = [e.reason for e in local_client.events(name)]
    assert reasons == ["Started", "Restarting", "Started", "Succeeded"]


def test_permanent_failure_raises_with_reason_and_message(
    local_client: TransferJobClient, make_job: MakeJob
) -> None:
    script = {
        "fail_attempts": 9,
        "fail": {"reason": "InvalidData", "message": "val/cats is empty", "permanent": True},
    }
    name = local_client.submit(make_job(script, runPolicy={"backoffLimit": 3}))
    with pytest.raises(JobFailedError) as caught:
        local_client.wait(name, timeout=60)
    error = caught.value
    assert (error.name, error.reason, error.message) == (name, "InvalidData", "val/cats is empty")
    assert error.job.status and error.job.status.restarts is None  # permanent: no retry
    assert local_client.events(name)[-1].reason == "InvalidData"


def test_a_crash_without_protocol_line_names_the_exit_code(
    local_client: TransferJobClient, make_job: MakeJob
) -> None:
    script = {"fail_attempts": 9, "silent_failure": True, "exit": 3}
    name = local_client.submit(make_job(script, runPolicy={"backoffLimit": 1}))
    with pytest.raises(
        JobFailedError, match="BackoffLimitExceeded: the trainer exited with code 3"
    ) as caught:
        local_client.wait(name, timeout=60)
    assert "after 2 attempts" in caught.value.message


def test_deadline_fails_the_job(local_client: TransferJobClient, make_job: MakeJob) -> None:
    name = local_client.submit(make_job({"epochs": 50, "sleep": 0.5}, runPolicy={"activeDeadlineSeconds": 2}))
    with pytest.raises(JobFailedError) as caught:
        local_client.wait(name, timeout=60)
    assert caught.value.reason == "DeadlineExceeded"


def test_wait_times_out_and_the_job_keeps_running(local_client: TransferJobClient, make_job: MakeJob) -> None:
    name = local_client.submit(make_job({"epochs": 30, "sleep": 0.3}))
    with pytest.raises(JobTimeoutError) as caught:
        local_client.wait(name, timeout=1.5)
    assert caught.value.name == name and caught.value.phase in ("Pending", "Running")
    assert local_client.get(name).status.phase in (Phase.PENDING, Phase.RUNNING)
    running = local_client.wait(name, until=Phase.RUNNING, timeout=30)
    assert running.status and running.status.phase is Phase.RUNNING
    local_client.delete(name)


def test_logs_tail_and_follow(local_client: TransferJobClient, make_job: MakeJob) -> None:
    name = local_client.submit(make_job({"epochs": 3, "sleep": 0.3}))
    followed = list(local_client.logs(name, follow=True))  # starts before the first line exists
    assert followed[0] == "some library chatter that is not a protocol line"
    epochs = [json.loads(line)["metrics"]["epoch"] for line in followed if '"event":"epoch"' in line]
    assert epochs == [1, 2, 3]
    assert '"event":"finished"' in followed[-1]
    assert list(local_client.logs(name, tail=1)) == followed[-1:]
    assert list(local_client.logs(name)) == followed


def test_delete_stops_a_running_job(
    local_client: TransferJobClient, make_job: MakeJob, tj_home: Path
) -> None:
    name = local_client.submit(make_job({"epochs": 100, "sleep": 0.2}))
    local_client.wait(name, until=Phase.RUNNING, timeout=30)
    pid = int((tj_home / "jobs" / name / "runner.pid").read_text())
    local_client.delete(name)
    with pytest.raises(JobNotFoundError):
        local_client.get(name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the runner's process group still runs after delete")
    with pytest.raises(JobNotFoundError):
        local_client.delete(name)


def test_a_killed_runner_shows_as_failed(
    local_client: TransferJobClient, make_job: MakeJob, tj_home: Path
) -> None:
    name = local_client.submit(make_job({"epochs": 100, "sleep": 0.2}))
    local_client.wait(name, until=Phase.RUNNING, timeout=30)
    os.killpg(int((tj_home / "jobs" / name / "runner.pid").read_text()), signal.SIGKILL)
    with pytest.raises(JobFailedError) as caught:
        local_client.wait(name, timeout=30)
    assert caught.value.reason == "RunnerLost"


def test_list_with_label_selector(local_client: TransferJobClient, make_job: MakeJob) -> None:
    a = make_job({"epochs": 1}, name="a")
    b = make_job({"epochs": 1}, name="b")
    b.metadata.labels["team"] = "vision"
    local_client.submit(a)
    local_client.submit(b)
    assert [j.metadata.name for j in local_client.list()] == ["a", "b"]
    assert [j.metadata.name for j in local_client.list(label_selector="team=vision")] == ["b"]
    assert [j.metadata.name for j in local_client.list(label_selector="suite=sdk,!team")] == ["a"]


def test_pvc_is_a_clear_error_locally(local_client: TransferJobClient, make_job: MakeJob) -> None:
    job = make_job(data={"source": {"pvc": {"claimName": "datasets", "subPath": "cats"}}})
    with pytest.raises(
        SpecError, match=r"spec\.data\.source\.pvc: a PersistentVolumeClaim exists only in a cluster"
    ):
        local_client.submit(job)
    assert local_client.list() == []


def test_fine_tune_chains_on_the_exported_model(local_client: TransferJobClient, make_job: MakeJob) -> None:
    first = local_client.submit(make_job({"epochs": 2, "sleep": 0.3}, name="features"))
    with pytest.raises(JobNotReadyError, match="has not succeeded"):
        local_client.fine_tune(from_job=first)
    model = local_client.wait(first, timeout=60).status.model.uri
    tuned = local_client.fine_tune(from_job=first, epochs=2)
    assert tuned == "features-finetune"
    job = local_client.wait(tuned, timeout=60)
    assert job.spec.mode is Mode.FINE_TUNING and job.spec.model.from_model == model
    assert job.spec.training.learning_rate == 1e-5
    assert job.status and job.status.phase is Phase.SUCCEEDED


def test_from_job_in_a_manifest_hands_the_model_to_the_trainer(
    local_client: TransferJobClient, make_job: MakeJob, tmp_path: Path
) -> None:
    first = local_client.submit(make_job({"epochs": 1}, name="up"))
    model = local_client.wait(first, timeout=60).status.model.uri
    second = make_job(
        {"epochs": 1}, name="down", mode="FineTuning", model={"base": "MobileNetV2", "fromJob": "up"}
    )
    local_client.submit(second)
    job = local_client.wait("down", timeout=60)
    assert job.spec.model.from_job == "up"  # stored as written
    out = job.spec.output.location.host_path
    assert json.loads((Path(out or "") / "args.json").read_text())["init_model"] == model


def test_wait_can_show_progress_and_stream_logs(
    local_client: TransferJobClient, make_job: MakeJob, capsys: pytest.CaptureFixture[str]
) -> None:
    name = local_client.submit(make_job({"epochs": 2, "sleep": 0.3}, name="chatty"))
    local_client.wait(name, timeout=60, progress=True, logs=True)
    captured = capsys.readouterr()
    assert "some library chatter that is not a protocol line" in captured.out
    assert sum('"event":"epoch"' in line for line in captured.out.splitlines()) == 2
    assert "chatty" in captured.err and "2/2" in captured.err  # the bar, at its end


def test_wait_is_quiet_by_default_when_not_on_a_terminal(
    local_client: TransferJobClient, make_job: MakeJob, capsys: pytest.CaptureFixture[str]
) -> None:
    local_client.wait(local_client.submit(make_job({"epochs": 1})), timeout=60)
    assert capsys.readouterr() == ("", "")


def test_a_name_longer_than_a_label_is_refused_before_anything_runs(
    local_client: TransferJobClient, make_job: MakeJob, tj_home: Path
) -> None:
    """As the API server refuses it: a 64-character name once trained to the end and then broke `list`."""
    with pytest.raises(SpecError) as caught:
        local_client.submit(make_job({"epochs": 1}), name="x" * 64)
    assert caught.value.problems == ["metadata.name: String should have at most 63 characters"]
    job = make_job({"epochs": 1}, name="ok")
    job.metadata.name = "y" * 64  # attribute assignment validates nothing; the backend does
    with pytest.raises(SpecError, match=r"metadata\.name"):
        local_client.backend.create(job)
    assert not (tj_home / "jobs").exists() or not any((tj_home / "jobs").iterdir())
    assert local_client.list() == []


def test_an_unreadable_record_is_left_out_of_list_with_a_warning(
    local_client: TransferJobClient, make_job: MakeJob, tj_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local_client.wait(local_client.submit(make_job({"epochs": 1}, name="good")), timeout=60)
    local_client.wait(local_client.submit(make_job({"epochs": 1}, name="broken")), timeout=60)
    job_file = tj_home / "jobs" / "broken" / "job.yaml"
    job_file.write_text(job_file.read_text().replace("name: broken", "name: " + "z" * 64))
    assert [j.metadata.name for j in local_client.list()] == ["good"]
    assert "local job 'broken' has an unreadable record" in caplog.text
    with pytest.raises(BackendError, match=r"local job 'broken'.*`tj --local delete broken` removes it"):
        local_client.get("broken")
    local_client.delete("broken")
    assert [j.metadata.name for j in local_client.list()] == ["good"]


def test_a_recreated_job_shows_only_its_own_events_and_log(
    local_client: TransferJobClient, make_job: MakeJob, tj_home: Path
) -> None:
    first = local_client.submit(make_job({"epochs": 1}, name="again"))
    local_client.wait(first, timeout=60)
    old_uid = local_client.get("again").metadata.uid
    assert [e.reason for e in local_client.events("again")] == ["Started", "Succeeded"]
    local_client.delete("again")
    script = {"fail_attempts": 9, "fail": {"reason": "InvalidData", "message": "empty", "permanent": True}}
    local_client.submit(make_job(script, name="again"))
    with pytest.raises(JobFailedError):
        local_client.wait("again", timeout=60)
    # An event of the deleted job written late (its runner outlived the delete) is not this job's.
    events_file = tj_home / "jobs" / "again" / "events.jsonl"
    stale = {"type": "Normal", "reason": "Succeeded", "message": "old", "time": "2025-01-01T00:00:00+00:00"}
    with events_file.open("a") as handle:
        handle.write(json.dumps({**stale, "uid": old_uid}) + "\n")
    reasons = [e.reason for e in local_client.events("again")]
    assert reasons == ["Started", "InvalidData"]
    assert not any('"event":"finished"' in line for line in local_client.logs("again"))


def test_a_spec_that_will_learn_nothing_is_submitted_with_a_warning(
    local_client: TransferJobClient, make_job: MakeJob
) -> None:
    """An untrained base (weights: none) is valid, and useless for transfer: a SpecWarning, as kubectl
    shows an API server's warning; the job is created all the same."""
    untrained = make_job({"epochs": 1}, name="untrained")
    untrained.spec.model.weights = "none"
    with pytest.warns(SpecWarning) as caught:
        name = local_client.submit(untrained)
    (warning,) = [w.message for w in caught]
    assert isinstance(warning, SpecWarning)
    assert (warning.reason, warning.field) == ("UntrainedBase", "spec.model.weights")
    assert "weights: imagenet" in warning.message and "pretrained saved model" in warning.message
    assert local_client.wait(name, timeout=60).status.phase is Phase.SUCCEEDED  # type: ignore[union-attr]


def test_the_trainer_gets_the_local_jobs_identity(local_client: TransferJobClient, make_job: MakeJob) -> None:
    """As the operator does with a TransferJob's uid: the trainer owns the output location in its name."""
    job = make_job({"epochs": 1}, name="owned")
    name = local_client.submit(job)
    done = local_client.wait(name, timeout=60)
    args = json.loads((Path(job.spec.output.location.host_path or "") / "args.json").read_text())
    assert args["job"] == "local/owned" and args["job_uid"] == done.metadata.uid
