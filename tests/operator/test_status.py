"""`status_from_job_and_pods`: what a user reads on `.status`, from Job, pod and trainer facts."""

from __future__ import annotations

import datetime as dt

from tests.operator.conftest import cond, make_job, make_pod, make_tj, terminated
from transferjob.models import (
    EpochMetrics,
    ModelArtifacts,
    Phase,
    ResourcesSpec,
    TestMetrics,
    TransferJob,
    TransferJobStatus,
)
from transferjob.progress import (
    EpochEnded,
    Failed,
    Finished,
    PhaseChanged,
    Started,
    encode,
    termination_message,
)
from transferjob.status import Progress, best_epoch, merge_conditions
from transferjob_operator.status import (
    Gate,
    invalid_spec_status,
    status_from_job_and_pods,
    status_patch,
    transitions,
)

NOW = dt.datetime(2025, 1, 1, 0, 10, tzinfo=dt.timezone.utc)


def _conds(status: object) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in status.conditions}  # type: ignore[attr-defined]


def _finished(epochs: int = 3, best: int = 2) -> Finished:
    history = [
        EpochMetrics(epoch=e, loss=1.0 / e, val_loss=[0.5, 0.3, 0.4][e - 1], val_accuracy=0.9)
        for e in range(1, epochs + 1)
    ]
    return Finished(
        epochs_run=epochs,
        best_epoch=best,
        test=TestMetrics(loss=0.2, accuracy=0.95),
        model=ModelArtifacts(uri="/output/digits-fe/model.keras"),
        history=history,
    )


def test_no_job_yet_is_pending(tj: TransferJob) -> None:
    status = status_from_job_and_pods(tj, None, [], Progress(), NOW)
    assert status.phase is Phase.PENDING
    assert status.observed_generation == 1
    assert status.epochs == 5  # planned, from the resolved spec


def test_unschedulable_pod_says_why(tj: TransferJob) -> None:
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    pod = make_pod(
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]
    )
    status = status_from_job_and_pods(tj, make_job(), [pod], Progress(), NOW)
    assert status.phase is Phase.PENDING
    kind, reason, said = _conds(status)["Unschedulable"]
    assert (kind, reason) == ("True", "Unschedulable")
    assert said.startswith("0/2 nodes are available: 2 Insufficient nvidia.com/gpu; ")
    assert "lower spec.resources" in said  # what the user can do
    assert status.job_name == "digits"


def test_image_pull_failure_is_reported(tj: TransferJob) -> None:
    pod = make_pod(state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}})
    status = status_from_job_and_pods(tj, make_job(), [pod], Progress(), NOW)
    kind, reason, message = _conds(status)["ImagePullFailed"]
    assert (kind, reason) == ("True", "ImagePullBackOff")
    assert "ghcr.io/transferjob/trainer:0.1.0" in message and "Back-off" in message


def test_problem_resolved_turns_false_and_keeps_history(tj: TransferJob) -> None:
    pod = make_pod(
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"}
        ]
    )
    first = status_from_job_and_pods(tj, make_job(), [pod], Progress(), NOW)
    running = make_pod(phase="Running", state={"running": {"startedAt": "2025-01-01T00:11:00Z"}})
    later = NOW + dt.timedelta(minutes=1)
    second = status_from_job_and_pods(
        tj.model_copy(update={"status": first}), make_job(), [running], Progress(), later
    )
    assert second.phase is Phase.RUNNING
    conds = {c.type: c for c in second.conditions}
    assert (conds["Unschedulable"].status, conds["Unschedulable"].reason) == ("False", "Scheduled")
    assert conds["Running"].status == "True"
    assert conds["Running"].last_transition_time == later
    events = transitions(first, second)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Running"), ("Normal", "Scheduled")]


def test_running_with_epochs_and_best_epoch(tj: TransferJob) -> None:
    progress = Progress()
    progress.apply(Started(mode="FeatureExtraction", base="MobileNetV2", epochs=5))
    for epoch, val_loss in [(1, 0.5), (2, 0.3), (3, 0.35)]:
        progress.apply(
            EpochEnded(epochs=5, metrics=EpochMetrics(epoch=epoch, val_loss=val_loss, val_accuracy=0.8))
        )
    pod = make_pod(phase="Running", state={"running": {}})
    status = status_from_job_and_pods(tj, make_job(startTime="2025-01-01T00:01:00Z"), [pod], progress, NOW)
    assert status.phase is Phase.RUNNING
    assert (status.epoch, status.epochs) == (3, 5)
    assert status.metrics is not None and status.metrics.epoch == 3
    assert [m.epoch for m in status.history] == [1, 2, 3]
    assert status.best_epoch == 2
    assert status.start_time == dt.datetime(2025, 1, 1, 0, 1, tzinfo=dt.timezone.utc)


def test_success_takes_the_termination_message(tj: TransferJob) -> None:
    """Even with no log line seen, the final metrics and the full history come from the pod status."""
    finished = _finished()
    pod = make_pod(phase="Succeeded", state=terminated(0, termination_message(finished), "Completed"))
    job = make_job([cond("Complete")], completionTime="2025-01-01T00:09:30Z")
    status = status_from_job_and_pods(tj, job, [pod], Progress(), NOW)
    assert status.phase is Phase.SUCCEEDED
    assert status.test is not None and status.test.accuracy == 0.95
    assert status.model is not None and status.model.uri == "/output/digits-fe/model.keras"
    assert status.best_epoch == 2
    assert [m.epoch for m in status.history] == [1, 2, 3]
    assert status.completion_time == dt.datetime(2025, 1, 1, 0, 9, 30, tzinfo=dt.timezone.utc)
    kind, reason, message = _conds(status)["Succeeded"]
    assert (kind, reason) == ("True", "Succeeded")
    assert "0.9500" in message


def test_history_is_bounded() -> None:
    tj = make_tj()
    progress = Progress()
    for epoch in range(1, 131):
        progress.apply(EpochEnded(epochs=130, metrics=EpochMetrics(epoch=epoch, val_loss=1.0)))
    status = status_from_job_and_pods(
        tj, make_job(), [make_pod("p", "Running", state={"running": {}})], progress, NOW
    )
    assert len(status.history) == 100
    assert status.history[0].epoch == 31 and status.history[-1].epoch == 130


def test_invalid_data_fails_with_the_trainers_message(tj: TransferJob) -> None:
    failed = Failed(reason="InvalidData", message="train/ has no class folders", permanent=True)
    pod = make_pod(phase="Failed", state=terminated(42, termination_message(failed)))
    job = make_job([cond("Failed", "PodFailurePolicy", "Container trainer ... exit code 42")], failed=1)
    status = status_from_job_and_pods(tj, job, [pod], Progress(), NOW)
    assert status.phase is Phase.FAILED
    kind, reason, message = _conds(status)["Failed"]
    assert (kind, reason) == ("True", "InvalidData")
    assert message == "train/ has no class folders"  # the trainer's words; pod and exit code are the Job's
    assert status.restarts is None  # failed once, never retried
    assert status.completion_time == dt.datetime(2025, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
    assert [(e.type, e.reason) for e in transitions(None, status)] == [("Warning", "InvalidData")]


def test_an_output_another_job_owns_fails_with_output_in_use(tj: TransferJob) -> None:
    """The trainer's OutputInUse (exit 42, before any epoch) on the TransferJob like any permanent error."""
    message = (
        "output location /output/digits-fe is owned by TransferJob ml/other (uid 1234, since "
        "2026-01-01T00:00:00Z), whose model and checkpoints are there; choose another output location, or "
        "create this TransferJob again with spec.output.ownershipPolicy: Adopt to continue from them"
    )
    failed = Failed(reason="OutputInUse", message=message, permanent=True)
    pod = make_pod(phase="Failed", state=terminated(42, termination_message(failed)))
    job = make_job([cond("Failed", "PodFailurePolicy", "Container trainer ... exit code 42")], failed=1)
    status = status_from_job_and_pods(tj, job, [pod], Progress(), NOW)
    assert status.phase is Phase.FAILED
    assert _conds(status)["Failed"] == ("True", "OutputInUse", message)
    assert [(e.type, e.reason, e.message) for e in transitions(None, status)] == [
        ("Warning", "OutputInUse", message)
    ]


def test_oom_kill_is_named(tj: TransferJob) -> None:
    pod = make_pod(phase="Failed", state=terminated(137, "", "OOMKilled"))
    job = make_job([cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    assert _conds(status_from_job_and_pods(tj, job, [pod], Progress(), NOW))["Failed"][1] == "OOMKilled"


def test_retryable_crash_exhausting_retries(tj: TransferJob) -> None:
    pods = [
        make_pod(f"p{i}", "Failed", f"2025-01-01T00:0{i}:00Z", terminated(1, f"Traceback...\nBoom {i}"))
        for i in range(4)
    ]
    job = make_job(
        [cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")], failed=4
    )
    status = status_from_job_and_pods(tj, job, pods, Progress(), NOW)
    kind, reason, message = _conds(status)["Failed"]
    assert (kind, reason) == ("True", "BackoffLimitExceeded")
    assert "p3" in message and "code 1" in message and "Boom 3" in message
    assert status.restarts == 3


def test_retryable_trainer_failure_exhausting_retries_keeps_the_trainers_words(tj: TransferJob) -> None:
    failed = Failed(reason="TrainingError", message="loss is NaN")
    pods = [
        make_pod(f"p{i}", "Failed", f"2025-01-01T00:0{i}:00Z", terminated(1, encode(failed)))
        for i in range(2)
    ]
    job = make_job(
        [cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")], failed=2
    )
    status = status_from_job_and_pods(tj, job, pods, Progress(), NOW)
    assert _conds(status)["Failed"] == ("True", "BackoffLimitExceeded", "TrainingError: loss is NaN")
    assert status.restarts == 1


def test_running_shows_the_trainers_step_once_it_has_spoken(tj: TransferJob) -> None:
    pod = make_pod(phase="Running", state={"running": {}})
    before = status_from_job_and_pods(tj, make_job(), [pod], Progress(), NOW)
    assert _conds(before)["Running"] == ("True", "Running", "pod digits-abc is running")
    progress = Progress.of([PhaseChanged(phase="training", message="epochs 1-5")])
    after = status_from_job_and_pods(tj, make_job(), [pod], progress, NOW)
    assert _conds(after)["Running"] == ("True", "Running", "training: epochs 1-5")


def test_deadline_exceeded(tj: TransferJob) -> None:
    job = make_job([cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    status = status_from_job_and_pods(tj, job, [], Progress(), NOW)
    assert _conds(status)["Failed"][:2] == ("True", "DeadlineExceeded")


def test_suspended_and_resumed(tj: TransferJob) -> None:
    suspended = status_from_job_and_pods(tj, make_job(suspend=True), [], Progress(), NOW)
    assert suspended.phase is Phase.SUSPENDED
    assert _conds(suspended)["Suspended"][:2] == ("True", "Suspended")
    resumed = status_from_job_and_pods(
        tj.model_copy(update={"status": suspended}), make_job(), [], Progress(), NOW
    )
    assert resumed.phase is Phase.PENDING
    assert _conds(resumed)["Suspended"][:2] == ("False", "Resumed")


def test_gate_holds_back_a_job_without_a_job(tj: TransferJob) -> None:
    gate = Gate(Phase.PENDING, "WaitingForJob", "WaitingForJob", "waiting for TransferJob up (Running)")
    status = status_from_job_and_pods(tj, None, [], Progress(), NOW, gate)
    assert status.phase is Phase.PENDING
    assert _conds(status)["WaitingForJob"] == (
        "True",
        "WaitingForJob",
        "waiting for TransferJob up (Running)",
    )


def test_conditions_keep_transition_time_while_unchanged() -> None:
    first = merge_conditions([], {"Running": ("Running", "pod a")}, NOW, 1)
    later = merge_conditions(first, {"Running": ("Running", "pod b")}, NOW + dt.timedelta(hours=1), 1)
    assert later[0].last_transition_time == NOW
    assert later[0].message == "pod b"


def test_invalid_spec_status() -> None:
    status = invalid_spec_status(None, ["spec.model.fineTuneAt: required"], 3, NOW)
    assert status.phase is Phase.FAILED
    assert _conds(status)["Failed"] == ("True", "InvalidSpec", "spec.model.fineTuneAt: required")


def test_status_patch_sets_changes_and_removes_vanished_fields(tj: TransferJob) -> None:
    status = status_from_job_and_pods(tj, make_job(), [], Progress(), NOW)
    assert status_patch(status.to_dict(), status) is None
    patch = status_patch({"phase": "Running", "epoch": 3, "kopf": {"x": 1}}, status)
    assert patch is not None
    assert patch["phase"] == "Pending" and patch["epoch"] is None and patch["kopf"] is None


def test_log_lines_and_termination_agree() -> None:
    """Events seen in the log and again in the termination message are counted once."""
    finished = _finished()
    progress = Progress()
    for metrics in finished.history:
        assert progress.apply_line(encode(EpochEnded(epochs=3, metrics=metrics)))
    assert not progress.apply_line("Epoch 1/3 - loss: 0.5")
    progress.apply(finished)
    progress.apply(finished)
    assert sorted(progress.history) == [1, 2, 3]
    assert progress.best_epoch == 2


def test_best_epoch_follows_the_monitor() -> None:
    history = [
        EpochMetrics(epoch=1, val_loss=0.50, val_accuracy=0.80),
        EpochMetrics(epoch=2, val_loss=0.4995, val_accuracy=0.90),
        EpochMetrics(epoch=3, val_loss=0.30, val_accuracy=0.85),
    ]
    assert best_epoch(history, "val_loss") == 3
    assert best_epoch(history, "val_loss", min_delta=0.25) == 1
    assert best_epoch(history[:2], "val_loss", min_delta=0.001) == 1  # not a real improvement
    assert best_epoch(history, "val_accuracy") == 2
    assert best_epoch([], "val_loss") is None


def test_pod_done_but_job_not_yet_complete_stays_running(tj: TransferJob) -> None:
    finished = _finished()
    pod = make_pod(phase="Succeeded", state=terminated(0, termination_message(finished), "Completed"))
    status = status_from_job_and_pods(tj, make_job([cond("SuccessCriteriaMet")]), [pod], Progress(), NOW)
    assert status.phase is Phase.RUNNING
    assert status.test is not None  # the final metrics are already there


def test_failure_target_is_already_failed(tj: TransferJob) -> None:
    failed = Failed(reason="InvalidData", message="no images", permanent=True)
    pod = make_pod(phase="Failed", state=terminated(42, termination_message(failed)))
    job = make_job([cond("FailureTarget", "PodFailurePolicy", "exit code 42")], failed=1)
    status = status_from_job_and_pods(tj, job, [pod], Progress(), NOW)
    assert status.phase is Phase.FAILED
    assert _conds(status)["Failed"][:2] == ("True", "InvalidData")


def test_restarts_count_failed_pods_the_job_controller_has_not_counted_yet(tj: TransferJob) -> None:
    """FailureTarget can come before the last failed pod moves from uncountedTerminatedPods to failed."""
    pods = [make_pod(f"p{i}", "Failed", f"2025-01-01T00:0{i}:00Z", terminated(1, "Boom")) for i in range(2)]
    job = make_job(
        [cond("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
        failed=1,
        uncountedTerminatedPods={"failed": ["uid-p1"]},
    )
    status = status_from_job_and_pods(tj, job, pods, Progress(), NOW)
    assert status.phase is Phase.FAILED
    assert status.restarts == 1


def test_each_worker_of_a_group_shows_its_newest_pod_and_its_failures() -> None:
    from tests.operator.conftest import make_pod
    from transferjob_operator.slim import slim_pod
    from transferjob_operator.status import worker_states

    def worker(name: str, index: str, phase: str, created: str) -> dict:
        pod = make_pod(name, phase, created)
        pod["metadata"]["labels"] = {"batch.kubernetes.io/job-completion-index": index, "other": "dropped"}
        return slim_pod(pod)

    pods = [
        worker("pair-1-a", "1", "Failed", "2025-01-01T00:00:02Z"),
        worker("pair-0-a", "0", "Running", "2025-01-01T00:00:01Z"),
        worker("pair-1-b", "1", "Running", "2025-01-01T00:00:09Z"),
    ]
    assert pods[0]["metadata"]["labels"] == {"batch.kubernetes.io/job-completion-index": "1"}
    states = [w.to_dict() for w in worker_states(pods)]
    assert states == [
        {"index": 0, "pod": "pair-0-a", "phase": "Running", "failures": 0},
        {"index": 1, "pod": "pair-1-b", "phase": "Running", "failures": 1},
    ]
    assert worker_states([make_pod()]) == []  # one worker: a plain Job, no index label


def test_a_worker_whose_pods_are_gone_keeps_its_place_on_the_status(tj: TransferJob) -> None:
    """Seen on the real node: worker 1 was replaced, the chief succeeded, and the Job controller deleted
    worker 1's still-running pod (successPolicy); `.status.workers` then listed the chief alone."""
    from tests.operator.conftest import make_pod
    from transferjob.models import WorkerStatus
    from transferjob_operator.status import worker_states

    def worker(name: str, index: str, phase: str, created: str) -> dict:
        pod = make_pod(name, phase, created)
        pod["metadata"]["labels"] = {"batch.kubernetes.io/job-completion-index": index}
        return pod

    running = [
        worker("pair-0-a", "0", "Failed", "2025-01-01T00:00:01Z"),
        worker("pair-0-b", "0", "Running", "2025-01-01T00:00:05Z"),
        worker("pair-1-a", "1", "Failed", "2025-01-01T00:00:02Z"),
        worker("pair-1-b", "1", "Running", "2025-01-01T00:00:06Z"),
    ]
    before = worker_states(running)
    assert [(w.pod, w.phase, w.failures) for w in before] == [
        ("pair-0-b", "Running", 1),
        ("pair-1-b", "Running", 1),
    ]
    # The chief succeeded; worker 1's pods (the failed one and the running one) were deleted.
    after = worker_states([{**running[1], "status": {"phase": "Succeeded"}}, running[0]], before)
    assert [w.to_dict() for w in after] == [
        {"index": 0, "pod": "pair-0-b", "phase": "Succeeded", "failures": 1},
        {"index": 1, "pod": "pair-1-b", "phase": "Removed", "failures": 1},
    ]
    # The Job finished while worker 1's pod still ran: the Job controller is deleting it.
    finished = worker_states([{**running[1], "status": {"phase": "Succeeded"}}, running[3]], before, True)
    assert [(w.pod, w.phase) for w in finished] == [("pair-0-b", "Succeeded"), ("pair-1-b", "Removed")]
    # Stopped by the Job controller after the chief succeeded: it exited with SIGTERM's code while being
    # deleted. Not a failure of the worker.
    sigtermed = {**running[3], "status": {"phase": "Failed"}}
    sigtermed["metadata"] = {**running[3]["metadata"], "deletionTimestamp": "2025-01-01T00:01:00Z"}
    chief_done = {**running[1], "status": {"phase": "Succeeded"}}
    stopped = worker_states([chief_done, sigtermed], [], True)
    assert [(w.phase, w.failures) for w in stopped] == [("Succeeded", 0), ("Removed", 0)]
    # A worker whose last pod had finished keeps that phase; nothing seen before, nothing invented.
    done = [WorkerStatus(index=1, pod="pair-1-b", phase="Succeeded", failures=0)]
    assert [(w.index, w.phase) for w in worker_states([], done)] == [(1, "Succeeded")]
    assert worker_states([], []) == []

    # Through the whole status: the previous `.status.workers` is what is remembered.
    pair = tj.model_copy(deep=True)
    pair.spec.resources.workers = 2
    pair.status = TransferJobStatus(workers=before)
    status = status_from_job_and_pods(pair, None, [running[0], running[1]], Progress(), NOW)
    assert [(w.index, w.phase) for w in status.workers] == [(0, "Running"), (1, "Removed")]


def test_a_workers_permanent_failure_explains_the_group_failing(tj: TransferJob) -> None:
    """Worker 1 finds bad data (permanent, FailJob); the chief's collectives then fail and it exits
    later, retryably: the TransferJob fails for worker 1's reason, not with the chief's aftermath."""
    bad = Failed(
        reason="InvalidData", message="1 corrupt or undecodable image file(s): train/5/x.png", permanent=True
    )
    cut_off = Failed(reason="TrainingError", message="Collective ops is aborted by: task 1 stopped")
    pods = [
        make_pod("pair-1-a", "Failed", "2025-01-01T00:00:01Z", terminated(42, termination_message(bad))),
        make_pod("pair-0-a", "Failed", "2025-01-01T00:00:02Z", terminated(1, termination_message(cut_off))),
    ]
    job = make_job([cond("Failed", "PodFailurePolicy", "Container trainer ... exit code 42")], failed=2)
    for pod, index in zip(pods, ("1", "0"), strict=True):
        pod["metadata"]["labels"] = {"batch.kubernetes.io/job-completion-index": index}
    tj = tj.model_copy(update={"spec": tj.spec.model_copy(update={"resources": ResourcesSpec(workers=2)})})
    status = status_from_job_and_pods(tj, job, pods, Progress(), NOW)
    assert status.phase is Phase.FAILED
    assert _conds(status)["Failed"] == ("True", "InvalidData", bad.message)
    assert status.restarts is None  # two pods failed, together: none was replaced
