"""Job and pod facts -> a `Verdict` for `transferjob.status.job_status`: the pure half of the operator.

The trainer's events become `.status` in the SDK (`transferjob.status`), the same way for the local
backend; this module adds only what the Job and its pods say. The operator never guesses: the phase
follows the child Job's conditions, the reason for a failure is the most specific one available (the
Job's deadline, the trainer's own `failed` event from the termination message, then the kernel's OOM
kill, then the Job controller's reason with the exit code and the end of the output), and a pod that
cannot start says why on the resource (the scheduler's message, the image pull error) instead of
sitting in Pending silently. Pod names and exit codes appear only in the words the operator writes
itself, never appended to the trainer's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from transferjob.models import Phase, TransferJob, TransferJobStatus
from transferjob.progress import Failed, Finished, decode
from transferjob.status import Progress, Verdict, job_status, merge_conditions
from transferjob.types import Json
from transferjob_operator.jobs import CONTAINER

#: Container waiting reasons that mean the image will not arrive without someone fixing something.
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)

#: Conditions that are bad news: their events are Warnings.
WARNING_CONDITIONS = frozenset({"Failed", "Unschedulable", "ImagePullFailed"})

#: The final phases (the SDK's set, under the name the reconciler uses).


@dataclass(frozen=True)
class Gate:
    """Why a TransferJob has no Job yet (fromJob waiting or failed, invalid spec, name conflict)."""

    phase: Phase
    condition: str
    reason: str
    message: str


@dataclass(frozen=True)
class Termination:
    """How the trainer container of one pod ended."""

    pod: str
    exit_code: int
    reason: str
    message: str
    finished_at: str | None

    @property
    def event(self) -> Finished | Failed | None:
        """The trainer's final protocol event, when the termination message holds one."""
        event = decode(self.message) if self.message else None
        return event if isinstance(event, Finished | Failed) else None


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp from the API server."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(obj: Json, ctype: str) -> Json | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def _trainer_status(pod: Json) -> Json:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status)
    return {}


def termination_of(pod: Json) -> Termination | None:
    """The trainer container's termination in this pod, if it has ended."""
    status = _trainer_status(pod)
    term = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
    if not term:
        return None
    return Termination(
        pod=pod["metadata"]["name"],
        exit_code=int(term.get("exitCode", 0)),
        reason=str(term.get("reason") or ""),
        message=str(term.get("message") or ""),
        finished_at=term.get("finishedAt"),
    )


def _by_creation(pods: Iterable[Json]) -> list[Json]:
    return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))


def latest_termination(pods: Iterable[Json]) -> Termination | None:
    """The most recent trainer exit among a Job's pods."""
    ended = [t for t in (termination_of(p) for p in _by_creation(pods)) if t is not None]
    return ended[-1] if ended else None


def with_terminations(progress: Progress, pods: Iterable[Json]) -> Progress:
    """Progress completed with the final events from termination messages (they survive missed logs)."""
    merged = progress.copy()
    for pod in _by_creation(pods):
        term = termination_of(pod)
        event = term.event if term else None
        if event is not None:
            merged.apply(event)
    return merged


def pod_problems(pods: Iterable[Json]) -> dict[str, tuple[str, str]]:
    """Why the current pod cannot start: condition type -> (reason, message)."""
    problems: dict[str, tuple[str, str]] = {}
    for pod in _by_creation(pods):
        if pod.get("metadata", {}).get("deletionTimestamp") or pod.get("status", {}).get("phase") not in (
            None,
            "Pending",
        ):
            continue
        for cond in pod.get("status", {}).get("conditions") or []:
            if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
                "PodScheduled",
                "False",
                "Unschedulable",
            ):
                problems["Unschedulable"] = (
                    "Unschedulable",
                    cond.get("message") or "the scheduler found no node for the pod",
                )
        waiting = (_trainer_status(pod).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            image = pod.get("spec", {}).get("containers", [{}])[0].get("image", "")
            detail = waiting.get("message") or waiting["reason"]
            problems["ImagePullFailed"] = (waiting["reason"], f"image {image}: {detail}")
    return problems


def _running_pod(pods: Iterable[Json]) -> Json | None:
    """The pod that is training; a pod that just succeeded counts until the Job notices (no Pending blip)."""
    for pod in reversed(_by_creation(pods)):
        phase = pod.get("status", {}).get("phase")
        if phase in ("Running", "Succeeded") and not pod["metadata"].get("deletionTimestamp"):
            return pod
    return None


def _retries_exhausted(job: Json) -> bool:
    """Whether the Job controller failed the Job for good rather than for a deadline."""
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget") or {}
    return failed.get("reason") in ("BackoffLimitExceeded", "PodFailurePolicy")


def failure_reason(job: Json, pods: Iterable[Json]) -> tuple[str, str] | None:
    """The most specific (reason, message) the Job and pods give for a failed Job.

    None when the trainer's own `failed` event explains it (InvalidData, InvalidSpec, ..., or a
    retryable failure that used up the retries): `job_status` words it the same way on every backend.
    Otherwise, in order: the Job's deadline; an OOM kill; the Job controller's reason with the exit code
    and the end of the trainer's output.
    """
    job_failed = _condition(job, "Failed") or _condition(job, "FailureTarget") or {}
    job_reason = str(job_failed.get("reason") or "Failed")
    job_message = str(job_failed.get("message") or "")
    if job_reason == "DeadlineExceeded":
        return "DeadlineExceeded", job_message or "the job ran longer than runPolicy.activeDeadlineSeconds"
    term = latest_termination(pods)
    if term is None:
        return job_reason, job_message or "the training Job failed"
    event = term.event
    retries_exhausted = _retries_exhausted(job)
    if isinstance(event, Failed) and (event.permanent or not retries_exhausted):
        return None
    if term.reason == "OOMKilled":
        return "OOMKilled", (
            f"pod {term.pod}: the trainer ran out of memory (exit code {term.exit_code}); "
            "raise spec.resources.memory or lower spec.training.batchSize"
        )
    if isinstance(event, Failed):
        return None
    reason = "BackoffLimitExceeded" if retries_exhausted else job_reason
    tail = term.message.strip().splitlines()[-1][-300:] if term.message.strip() else ""
    detail = f": {tail}" if tail else ""
    return reason, f"pod {term.pod}: trainer exited with code {term.exit_code}{detail}"


def verdict(tj: TransferJob, job: Json | None, pods: list[Json], gate: Gate | None) -> Verdict:
    """Where the TransferJob stands, from its Job and pods (or the gate that holds it back)."""
    if job is None:
        if gate is None:
            return Verdict(Phase.PENDING)
        return Verdict(gate.phase, {gate.condition: (gate.reason, gate.message)})
    complete = _condition(job, "Complete")
    if complete is not None:
        when = parse_time(job.get("status", {}).get("completionTime") or complete.get("lastTransitionTime"))
        return Verdict(Phase.SUCCEEDED, completion_time=when)
    # FailureTarget: the Job controller has decided (podFailurePolicy, backoff limit) and is only
    # waiting for pods to terminate; Failed follows.
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed is not None:
        reason = failure_reason(job, pods)
        return Verdict(
            Phase.FAILED,
            {"Failed": reason} if reason is not None else {},
            parse_time(failed.get("lastTransitionTime")),
            retries_exhausted=_retries_exhausted(job),
        )
    if job.get("spec", {}).get("suspend"):
        queued = tj.metadata.labels.get("kueue.x-k8s.io/queue-name")
        if queued and not tj.spec.run_policy.suspend:
            return Verdict(Phase.SUSPENDED, {"Suspended": ("Queued", f"waiting for Kueue queue {queued}")})
        return Verdict(Phase.SUSPENDED, {"Suspended": ("Suspended", "runPolicy.suspend is true")})
    running = _running_pod(pods)
    if running is not None:
        pod = running["metadata"]["name"]
        return Verdict(Phase.RUNNING, {"Running": ("Running", f"pod {pod} is running")})
    return Verdict(Phase.PENDING, pod_problems(pods))


def restarts(job: Json | None, phase: Phase) -> int:
    """Training pods that failed and were replaced by a new one."""
    job_status = (job or {}).get("status", {})
    # Failed pods that a new pod replaced: the last failure of a failed job was not retried.
    # The Job controller counts a failed pod in `failed` only after it has dropped the pod's tracking
    # finalizer; until then (FailureTarget may already be set) the pod is in uncountedTerminatedPods.
    uncounted = (job_status.get("uncountedTerminatedPods") or {}).get("failed") or []
    failed_pods = int(job_status.get("failed", 0) or 0) + len(uncounted)
    return failed_pods - 1 if phase is Phase.FAILED and failed_pods else failed_pods


def status_from_job_and_pods(
    tj: TransferJob,
    job: Json | None,
    pods: list[Json],
    progress: Progress,
    now: dt.datetime,
    gate: Gate | None = None,
) -> TransferJobStatus:
    """The whole `.status` for a TransferJob: `job_status` of the trainer's events and the Job's verdict.

    `progress` holds the events read from the pods' logs; the final events in the pods' termination
    messages are added here (they survive a missed log line or an operator restart).
    """
    result = verdict(tj, job, pods, gate)
    return job_status(
        with_terminations(progress, pods),
        result,
        tj.spec,
        tj.status,
        now,
        tj.metadata.generation,
        start_time=parse_time((job or {}).get("status", {}).get("startTime")),
        job_name=job["metadata"]["name"] if job is not None else None,
        restarts=restarts(job, result.phase),
    )


@dataclass(frozen=True)
class Transition:
    """One Kubernetes Event to post: a condition that just became True."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str


def transitions(before: TransferJobStatus | None, after: TransferJobStatus) -> list[Transition]:
    """The Events for a status change: one per condition that turned True (or changed reason)."""
    old = {c.type: c for c in (before.conditions if before else [])}
    events = []
    for cond in after.conditions:
        prior = old.get(cond.type)
        if cond.status != "True":
            if prior is not None and prior.status == "True":
                events.append(Transition("Normal", cond.reason, f"{cond.type} no longer applies"))
            continue
        if prior is None or prior.status != "True" or prior.reason != cond.reason:
            kind = "Warning" if cond.type in WARNING_CONDITIONS else "Normal"
            events.append(Transition(kind, cond.reason, cond.message))
    return events


def status_patch(before: Json, after: TransferJobStatus) -> Json | None:
    """A JSON merge patch turning `.status` from `before` into `after`, or None when equal.

    Fields that disappeared are set to null (merge-patch deletion).
    """
    wanted = after.to_dict()
    patch: Json = {k: v for k, v in wanted.items() if before.get(k) != v}
    for key in before:
        if key not in wanted:
            patch[key] = None
    return patch or None


def invalid_spec_status(
    previous: TransferJobStatus | None, problems: list[str], generation: int | None, now: dt.datetime
) -> TransferJobStatus:
    """Failed/InvalidSpec for a stored spec that the models reject (admission should have caught it)."""
    previous = previous or TransferJobStatus()
    message = "; ".join(problems)
    return TransferJobStatus(
        phase=Phase.FAILED,
        conditions=merge_conditions(
            previous.conditions, {"Failed": ("InvalidSpec", message)}, now, generation
        ),
        completion_time=previous.completion_time or now,
        observed_generation=generation,
    )
