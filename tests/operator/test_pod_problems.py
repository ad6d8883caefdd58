"""Pods that do not start -> conditions that say why and what to do; the pending timeout; how
conditions close. Pure functions, fed with Jobs, pods and Events recorded on the test control plane
(`tests/data/podstart/`, recorded from the scenarios of `test_podstart.py`: the real scheduler, Job
controller and quota admission, with the process node agent of the first round as the kubelet;
`test_podstart.py` now checks the same conditions end to end against the real kubelet).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import make_job, make_pod, make_tj
from transferjob.models import Condition, Phase, TransferJob, TransferJobStatus
from transferjob.status import Progress
from transferjob.types import Json
from transferjob_operator.slim import slim_job, slim_pod
from transferjob_operator.status import (
    EVENTS_AFTER,
    STUCK_AFTER,
    Gate,
    duration,
    event_subjects,
    parse_time,
    pending_timeout,
    status_from_job_and_pods,
    transitions,
)

RECORDED = Path(__file__).parent.parent / "data" / "podstart"


class Recorded:
    """One recorded moment: the Job, its pods (slimmed as the operator keeps them) and their Events."""

    def __init__(self, name: str) -> None:
        data = json.loads((RECORDED / f"{name}.json").read_text())
        self.job: Json = slim_job(data["job"])
        self.pods: list[Json] = [slim_pod(p) for p in data["pods"]]
        self.events: list[Json] = data["events"]
        started = parse_time(self.job["status"]["startTime"])
        assert started is not None
        self.started = started

    def at(self, seconds: float) -> dt.datetime:
        return self.started + dt.timedelta(seconds=seconds)

    def status(
        self, tj: TransferJob, seconds: float, gate: Gate | None = None, events: bool = True
    ) -> TransferJobStatus:
        return status_from_job_and_pods(
            tj, self.job, self.pods, Progress(), self.at(seconds), gate, self.events if events else []
        )


def _conds(status: TransferJobStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in status.conditions}


def _with_timeout(seconds: int) -> TransferJob:
    tj = make_tj()
    spec = tj.spec.model_copy(
        update={"run_policy": tj.spec.run_policy.model_copy(update={"pending_timeout_seconds": seconds})}
    )
    return tj.model_copy(update={"spec": spec})


# -------------------------------------------------------------------------- each way to not start


def test_failed_mount_names_the_folder_and_what_to_do(tj: TransferJob) -> None:
    mount = Recorded("failed-mount")
    status = mount.status(tj, 10)
    assert status.phase is Phase.PENDING
    kind, reason, message = _conds(status)["VolumeMountFailed"]
    assert (kind, reason) == ("True", "FailedMount")
    assert message.startswith(f"pod {mount.pods[0]['metadata']['name']}: MountVolume.SetUp failed")
    assert "hostPath type check failed" in message and "dgits is not a directory" in message
    assert "create the folder or PersistentVolumeClaim that spec.data.source" in message
    assert "pendingTimeoutSeconds bounds the wait" in message
    assert [(e.type, e.reason) for e in transitions(None, status)] == [("Warning", "FailedMount")]


def test_events_are_read_only_for_a_pod_that_waits_unusually_long() -> None:
    mount = Recorded("failed-mount")
    uid = mount.pods[0]["metadata"]["uid"]
    assert event_subjects(mount.job, mount.pods, mount.at(EVENTS_AFTER - 1)) == []
    assert event_subjects(mount.job, mount.pods, mount.at(EVENTS_AFTER)) == [uid]
    unschedulable = Recorded("unschedulable")  # the pod's own status says why: no Events needed
    assert event_subjects(unschedulable.job, unschedulable.pods, unschedulable.at(60)) == []


def test_quota_refusal_is_the_job_controllers_failed_create(tj: TransferJob) -> None:
    quota = Recorded("quota-exceeded")
    assert quota.pods == []
    assert event_subjects(quota.job, [], quota.at(EVENTS_AFTER)) == [quota.job["metadata"]["uid"]]
    kind, reason, message = _conds(quota.status(tj, 10))["PodCreateFailed"]
    assert (kind, reason) == ("True", "QuotaExceeded")
    assert message.startswith("the Job controller cannot create the training pod: Error creating: pods")
    assert "exceeded quota: no-gpus, requested: requests.nvidia.com/gpu=1" in message
    assert "kubectl describe resourcequota" in message


def test_a_refusal_before_the_newest_pod_was_created_is_over(tj: TransferJob) -> None:
    quota = Recorded("quota-exceeded")
    later = make_pod(
        "overquota-x", phase="Failed", created="2099-01-01T00:00:00Z"
    )  # created after the events
    status = status_from_job_and_pods(tj, quota.job, [later], Progress(), quota.at(10), None, quota.events)
    assert "PodCreateFailed" not in _conds(status)


def test_create_container_config_error_says_what_is_missing(tj: TransferJob) -> None:
    kind, reason, message = _conds(Recorded("create-container-config-error").status(tj, 10))[
        "ContainerStartFailed"
    ]
    assert (kind, reason) == ("True", "CreateContainerConfigError")
    assert 'container trainer: secret "proxy" not found' in message
    assert "create the Secret or ConfigMap the message names" in message


@pytest.mark.parametrize(
    ("waiting", "advice"),
    [
        ("CreateContainerError", "cannot create the trainer container"),
        ("RunContainerError", "cannot start the trainer container"),
    ],
)
def test_container_runtime_errors_say_so(tj: TransferJob, waiting: str, advice: str) -> None:
    pod = make_pod(state={"waiting": {"reason": waiting, "message": "runtime said no"}})
    kind, reason, message = _conds(status_from_job_and_pods(tj, make_job(), [pod], Progress(), NOW))[
        "ContainerStartFailed"
    ]
    assert (kind, reason) == ("True", waiting)
    assert "runtime said no" in message and advice in message


def test_unschedulable_says_what_to_change(tj: TransferJob) -> None:
    kind, reason, message = _conds(Recorded("unschedulable").status(tj, 10))["Unschedulable"]
    assert (kind, reason) == ("True", "Unschedulable")
    assert "2 Insufficient nvidia.com/gpu" in message and "lower spec.resources" in message


def test_a_missing_claim_says_to_create_it(tj: TransferJob) -> None:
    """A PVC that does not exist keeps the pod unschedulable: the advice is the claim, not resources."""
    said = '0/2 nodes are available: persistentvolumeclaim "models" not found. preemption: not eligible'
    unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": said}
    status = status_from_job_and_pods(tj, make_job(), [make_pod(conditions=[unscheduled])], Progress(), NOW)
    kind, reason, message = _conds(status)["Unschedulable"]
    assert (kind, reason) == ("True", "Unschedulable")
    assert 'persistentvolumeclaim "models" not found' in message
    assert "create the PersistentVolumeClaim" in message and "lower spec.resources" not in message


def test_container_creating_without_a_word_for_long_says_how_long(tj: TransferJob) -> None:
    mount = Recorded("failed-mount")
    mount.events = [e for e in mount.events if e["reason"] != "FailedMount"]  # only "Scheduled" left
    assert "StartDelayed" not in _conds(mount.status(tj, STUCK_AFTER - 10))
    kind, reason, message = _conds(mount.status(tj, STUCK_AFTER + 61))["StartDelayed"]
    assert (kind, reason) == ("True", "ContainerCreating")
    assert "has been in ContainerCreating for 6m1s, with no event about it for 6m0s" in message
    assert "(the last: Scheduled: Successfully assigned" in message
    assert "kubectl describe pod" in message


def test_durations_read_like_a_person_writes_them() -> None:
    assert [duration(s) for s in (0, 45, 310, 7380)] == ["0s", "45s", "5m10s", "2h3m"]


# ------------------------------------------------------------------------------- pending timeout


def test_pending_timeout_counts_from_the_job_start_and_names_the_last_problem() -> None:
    mount = Recorded("failed-mount")
    tj = _with_timeout(30)
    assert pending_timeout(tj, mount.job, mount.pods, mount.events, None, mount.at(29)) is None
    gate = pending_timeout(tj, mount.job, mount.pods, mount.events, None, mount.at(30))
    assert gate is not None
    assert (gate.phase, gate.condition, gate.reason) == (Phase.FAILED, "Failed", "PendingTimeout")
    assert "did not start running within runPolicy.pendingTimeoutSeconds (30s)" in gate.message
    assert "last problem seen: FailedMount: pod " in gate.message
    assert "dgits is not a directory; fix it and create the TransferJob again" in gate.message
    assert "the kubelet keeps retrying" not in gate.message  # the advice for waiting no longer holds


def test_pending_timeout_remembers_the_problem_once_the_pods_are_gone() -> None:
    mount = Recorded("failed-mount")
    tj = _with_timeout(30)
    before = mount.status(tj, 10)
    gate = pending_timeout(tj, mount.job, [], [], before, mount.at(31))
    assert gate is not None and "dgits is not a directory" in gate.message


def test_no_pending_timeout_without_a_limit_a_job_or_a_start(tj: TransferJob) -> None:
    mount = Recorded("failed-mount")
    late = mount.at(10_000)
    assert pending_timeout(tj, mount.job, mount.pods, mount.events, None, late) is None  # no limit
    limited = _with_timeout(30)
    assert pending_timeout(limited, None, [], [], None, late) is None  # fromJob waiting: no Job yet
    suspended = {**mount.job, "spec": {**mount.job["spec"], "suspend": True}}
    assert pending_timeout(limited, suspended, mount.pods, [], None, late) is None
    ran = make_pod("p", "Failed", state={"terminated": {"exitCode": 1, "reason": "Error"}})
    assert pending_timeout(limited, mount.job, [*mount.pods, ran], [], None, late) is None
    never = make_pod("q", "Failed", state={"terminated": {"exitCode": 128, "reason": "StartError"}})
    assert pending_timeout(limited, mount.job, [never], [], None, late) is not None


def test_a_job_that_ended_before_the_deadline_keeps_its_own_reason() -> None:
    mount = Recorded("failed-mount")
    deadline = mount.at(30).isoformat()
    early = {
        **mount.job,
        "status": {**mount.job["status"], "conditions": [_failed(mount.at(20).isoformat())]},
    }
    assert pending_timeout(_with_timeout(30), early, [], [], None, mount.at(100)) is None
    # Stopped by the operator at the deadline (and seen again after a failed status write): still ours.
    stopped = {**mount.job, "status": {**mount.job["status"], "conditions": [_failed(deadline)]}}
    assert pending_timeout(_with_timeout(30), stopped, [], [], None, mount.at(100)) is not None


def _failed(when: str) -> Json:
    return {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": when}


def test_pending_timeout_closes_the_problem_with_what_happened() -> None:
    mount = Recorded("failed-mount")
    tj = _with_timeout(30)
    before = mount.status(tj, 10)
    gate = pending_timeout(tj, mount.job, mount.pods, mount.events, before, mount.at(31))
    after = mount.status(tj.model_copy(update={"status": before}), 31, gate)
    assert after.phase is Phase.FAILED and after.completion_time == mount.at(31)
    conds = _conds(after)
    assert conds["Failed"][:2] == ("True", "PendingTimeout")
    assert conds["VolumeMountFailed"] == (
        "False",
        "PendingTimeout",
        "ended without resolving: the job failed (PendingTimeout)",
    )
    # One Warning: the closed condition does not announce a second, Normal "PendingTimeout".
    assert [(e.type, e.reason) for e in transitions(before, after)] == [("Warning", "PendingTimeout")]


def test_a_problem_first_seen_at_the_timeout_is_recorded_closed() -> None:
    """No status write fell between the kubelet's first FailedMount and the deadline (a busy operator,
    a short timeout): the problem that the Failed message names is on the status too, closed."""
    mount = Recorded("failed-mount")
    tj = _with_timeout(30)
    before = mount.status(tj, 0, events=False)  # the last write saw only a pod on its way to start
    assert "VolumeMountFailed" not in _conds(before)
    gate = pending_timeout(tj, mount.job, mount.pods, mount.events, before, mount.at(31))
    assert gate is not None and set(gate.seen) == {"VolumeMountFailed"}
    after = mount.status(tj.model_copy(update={"status": before}), 31, gate)
    status, reason, message = _conds(after)["VolumeMountFailed"]
    assert (status, reason) == ("False", "PendingTimeout")
    closed = "ended without resolving: the job failed (PendingTimeout)"
    assert message.startswith(f"{closed}; it was FailedMount: "), message
    assert "not a directory" in message, message
    assert _conds(after)["Starting"][:2] == ("False", "PendingTimeout")
    # Never announced True, so no Event closes it: the Failed Warning says it all.
    assert [(e.type, e.reason) for e in transitions(before, after)] == [("Warning", "PendingTimeout")]
    # Written once, it stays as it is (the job is over).
    again = mount.status(tj.model_copy(update={"status": after}), 40, gate)
    mounts = [[c for c in s.conditions if c.type == "VolumeMountFailed"] for s in (after, again)]
    assert mounts[0] == mounts[1], mounts


# ---------------------------------------------------------------- conditions close with the truth

NOW = dt.datetime(2025, 1, 1, 0, 10, tzinfo=dt.timezone.utc)


def _previous(**conditions: tuple[str, str]) -> TransferJobStatus:
    return TransferJobStatus(
        phase=Phase.PENDING,
        conditions=[
            Condition(type=t, status="True", reason=r, message=m, last_transition_time=NOW)
            for t, (r, m) in conditions.items()
        ],
    )


def _after(previous: TransferJobStatus, job: Json | None, pods: list[Json], gate: Gate | None = None) -> Any:
    tj = make_tj().model_copy(update={"status": previous})
    return _conds(status_from_job_and_pods(tj, job, pods, Progress(), NOW, gate))


def test_waiting_for_a_failed_upstream_does_not_close_as_succeeded() -> None:
    waiting = _previous(WaitingForJob=("WaitingForJob", "waiting for TransferJob features (Running)"))
    for reason in ("UpstreamFailed", "UpstreamNotFound", "UpstreamHasNoModel", "FromJobCycle"):
        gate = Gate(Phase.FAILED, "Failed", reason, "why")
        assert _after(waiting, None, [], gate)["WaitingForJob"] == (
            "False",
            reason,
            f"ended without resolving: the job failed ({reason})",
        )
    # The upstream succeeded: the Job was created.
    assert _after(waiting, make_job(), [])["WaitingForJob"][:2] == ("False", "UpstreamSucceeded")


def test_a_problem_closes_as_resolved_only_when_the_pod_went_on() -> None:
    unschedulable = _previous(Unschedulable=("Unschedulable", "0/2 nodes are available"))
    running = make_pod(phase="Running", state={"running": {}})
    assert _after(unschedulable, make_job(), [running])["Unschedulable"][:2] == ("False", "Scheduled")
    # Suspended: the pod was deleted, never scheduled.
    suspended = _after(unschedulable, make_job(suspend=True), [])["Unschedulable"]
    assert suspended[:2] == ("False", "Suspended") and "suspended" in suspended[2]
    # The pod went away (deleted, evicted) while Pending: not scheduled either.
    assert _after(unschedulable, make_job(), [])["Unschedulable"][:2] == ("False", "PodDeleted")
    # The Job failed (a deadline) while it waited.
    deadline = make_job([_failed("2025-01-01T00:09:00Z")])
    assert _after(unschedulable, deadline, [])["Unschedulable"][:2] == ("False", "DeadlineExceeded")


def test_every_non_terminal_condition_closes() -> None:
    """No condition type the operator sets True is left True once the job ended."""
    problems = {
        "Unschedulable": ("Unschedulable", "m"),
        "ImagePullFailed": ("ErrImagePull", "m"),
        "VolumeMountFailed": ("FailedMount", "m"),
        "ContainerStartFailed": ("CreateContainerConfigError", "m"),
        "PodCreateFailed": ("QuotaExceeded", "m"),
        "StartDelayed": ("ContainerCreating", "m"),
        "WaitingForJob": ("WaitingForJob", "m"),
        "Running": ("Running", "m"),
        "Suspended": ("Suspended", "m"),
    }
    closed = _after(_previous(**problems), make_job([_failed("2025-01-01T00:09:00Z")]), [])
    assert {t for t, c in closed.items() if c[0] == "True"} == {"Failed"}


def test_a_group_with_a_worker_left_unplaced_is_pending_with_its_reason() -> None:
    """Worker 0 runs (and waits at the rendezvous), worker 1 cannot be placed: Pending, and why."""
    from transferjob_operator.slim import slim_pod

    spec = make_tj().spec.to_dict() | {"mode": "FineTuning", "model": {"base": "MobileNetV2"}}
    spec["resources"] = {"workers": 2, "gpus": 3}
    group = make_tj(spec)
    said = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": said}

    def worker(index: str, phase: str, conditions: list | None = None) -> dict:
        pod = make_pod(f"digits-{index}-x", phase, conditions=conditions)
        pod["metadata"]["labels"] = {"batch.kubernetes.io/job-completion-index": index}
        return slim_pod(pod)

    pods = [worker("0", "Running"), worker("1", "Pending", [unscheduled])]
    status = status_from_job_and_pods(group, make_job(), pods, Progress(), NOW)
    assert status.phase is Phase.PENDING
    kind, reason, message = _conds(status)["Unschedulable"]
    assert (kind, reason) == ("True", "Unschedulable") and "Insufficient nvidia.com/gpu" in message
    assert [w.phase for w in status.workers] == ["Running", "Pending"]

    both = [worker("0", "Running"), worker("1", "Running")]
    assert status_from_job_and_pods(group, make_job(), both, Progress(), NOW).phase is Phase.RUNNING
