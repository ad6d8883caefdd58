"""Job, pod and trainer facts -> `.status`: the pure half of the operator, unit-tested without a cluster.

The operator never guesses: the phase follows the child Job's conditions, the reason for a failure is
the most specific one available (the trainer's own `failed` event from the termination message, then the
kernel's OOM kill, then the Job controller's reason), and a pod that cannot start says why on the
resource (the scheduler's message, the image pull error) instead of sitting in Pending silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from transferjob.models import Condition, Phase, TransferJob, TransferJobStatus
from transferjob.progress import Failed, Finished, decode
from transferjob_operator.jobs import CONTAINER
from transferjob_operator.tracking import Progress, best_epoch

Json = dict[str, Any]

#: Container waiting reasons that mean the image will not arrive without someone fixing something.
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)

#: Condition types that describe a passing state; when one stops applying it turns False with this reason.
RESOLVED_REASONS = {
    "Running": "NotRunning",
    "Suspended": "Resumed",
    "Unschedulable": "Scheduled",
    "ImagePullFailed": "ImagePulled",
    "WaitingForJob": "UpstreamSucceeded",
}

#: Conditions that are bad news: their events are Warnings.
WARNING_CONDITIONS = frozenset({"Failed", "Unschedulable", "ImagePullFailed"})

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)


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


def failure_reason(job: Json, pods: Iterable[Json]) -> tuple[str, str]:
    """The most specific (reason, message) for a failed Job.

    Order: the Job's deadline; the trainer's own `failed` event (InvalidData, InvalidSpec, ...); an OOM
    kill; otherwise the Job controller's reason with the exit code and the end of the trainer's output.
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
    retries_exhausted = job_reason in ("BackoffLimitExceeded", "PodFailurePolicy")
    # The trainer's reason wins when no retry could help (InvalidData, ...); a retryable failure that
    # failed the Job by exhausting backoffLimit is BackoffLimitExceeded, with the trainer's words.
    if isinstance(event, Failed) and (event.permanent or not retries_exhausted):
        return event.reason, f"{event.message} (pod {term.pod}, exit code {term.exit_code})"
    if term.reason == "OOMKilled":
        return "OOMKilled", (
            f"pod {term.pod}: the trainer ran out of memory (exit code {term.exit_code}); "
            "raise spec.resources.memory or lower spec.training.batchSize"
        )
    reason = "BackoffLimitExceeded" if retries_exhausted else job_reason
    if isinstance(event, Failed):
        tail = f"{event.reason}: {event.message}"[:300]
    else:
        tail = term.message.strip().splitlines()[-1][-300:] if term.message.strip() else ""
    detail = f": {tail}" if tail else ""
    return reason, f"pod {term.pod}: trainer exited with code {term.exit_code}{detail}"


@dataclass(frozen=True)
class Verdict:
    """The phase and the conditions that are True now, before merging with the previous ones."""

    phase: Phase
    conditions: dict[str, tuple[str, str]]
    completion_time: dt.datetime | None = None


def verdict(tj: TransferJob, job: Json | None, pods: list[Json], gate: Gate | None) -> Verdict:
    """Where the TransferJob stands, from its Job and pods (or the gate that holds it back)."""
    if job is None:
        if gate is None:
            return Verdict(Phase.PENDING, {})
        return Verdict(gate.phase, {gate.condition: (gate.reason, gate.message)})
    name = job["metadata"]["name"]
    complete = _condition(job, "Complete")
    if complete is not None:
        when = parse_time(job.get("status", {}).get("completionTime") or complete.get("lastTransitionTime"))
        return Verdict(Phase.SUCCEEDED, {"Succeeded": ("Succeeded", f"Job {name} completed")}, when)
    # FailureTarget: the Job controller has decided (podFailurePolicy, backoff limit) and is only
    # waiting for pods to terminate; Failed follows.
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed is not None:
        reason, message = failure_reason(job, pods)
        return Verdict(
            Phase.FAILED, {"Failed": (reason, message)}, parse_time(failed.get("lastTransitionTime"))
        )
    if job.get("spec", {}).get("suspend"):
        queued = tj.metadata.labels.get("kueue.x-k8s.io/queue-name")
        if queued and not tj.spec.run_policy.suspend:
            return Verdict(Phase.SUSPENDED, {"Suspended": ("Queued", f"waiting for Kueue queue {queued}")})
        return Verdict(Phase.SUSPENDED, {"Suspended": ("Suspended", "runPolicy.suspend is true")})
    running = _running_pod(pods)
    if running is not None:
        return Verdict(
            Phase.RUNNING, {"Running": ("Running", f"pod {running['metadata']['name']} is training")}
        )
    return Verdict(Phase.PENDING, pod_problems(pods))


def merge_conditions(
    previous: list[Condition], current: dict[str, tuple[str, str]], now: dt.datetime, generation: int | None
) -> list[Condition]:
    """Conditions, one per type: True ones from `current`, earlier True ones turned False.

    A condition keeps its lastTransitionTime while its status stays the same, so `kubectl describe`
    shows when something started, not when the operator last looked.
    """
    merged: dict[str, Condition] = {}
    old = {c.type: c for c in previous}
    for ctype, cond in old.items():
        if ctype in current:
            continue
        if cond.status == "True" and ctype in RESOLVED_REASONS:
            merged[ctype] = Condition(
                type=ctype,
                status="False",
                reason=RESOLVED_REASONS[ctype],
                message="",
                last_transition_time=now,
                observed_generation=generation,
            )
        else:
            merged[ctype] = cond
    for ctype, (reason, message) in current.items():
        before = old.get(ctype)
        since = before.last_transition_time if before is not None and before.status == "True" else None
        merged[ctype] = Condition(
            type=ctype,
            status="True",
            reason=reason,
            message=message,
            last_transition_time=since or now,
            observed_generation=generation,
        )
    return [merged[t] for t in sorted(merged)]


def _success_message(progress: Progress) -> str:
    parts = []
    if progress.test is not None:
        parts.append(f"test accuracy {progress.test.accuracy:.4f}")
    if progress.history:
        parts.append(f"after {len(progress.history)} epochs")
    if progress.best_epoch is not None:
        parts.append(f"(best epoch {progress.best_epoch})")
    if progress.model is not None:
        parts.append(f"model at {progress.model.uri}")
    return " ".join(parts) or "training finished"


def status_from_job_and_pods(
    tj: TransferJob,
    job: Json | None,
    pods: list[Json],
    progress: Progress,
    now: dt.datetime,
    gate: Gate | None = None,
) -> TransferJobStatus:
    """The whole `.status` for a TransferJob, from what its Job, pods and trainer say."""
    previous = tj.status or TransferJobStatus()
    progress = with_terminations(progress, pods)
    result = verdict(tj, job, pods, gate)
    conditions = dict(result.conditions)
    if "Succeeded" in conditions:
        conditions["Succeeded"] = ("Succeeded", _success_message(progress))
    generation = tj.metadata.generation

    history = progress.recent_history()
    best = progress.best_epoch
    if best is None and history:
        stopping = tj.spec.training.early_stopping
        best = best_epoch(history, stopping.monitor, stopping.min_delta)
    job_status = (job or {}).get("status", {})
    completion = previous.completion_time
    if result.phase in TERMINAL and completion is None:
        completion = result.completion_time or now
    # Failed pods that a new pod replaced: the last failure of a failed job was not retried.
    # The Job controller counts a failed pod in `failed` only after it has dropped the pod's tracking
    # finalizer; until then (FailureTarget may already be set) the pod is in uncountedTerminatedPods.
    uncounted = (job_status.get("uncountedTerminatedPods") or {}).get("failed") or []
    failed_pods = int(job_status.get("failed", 0) or 0) + len(uncounted)
    restarts = failed_pods - 1 if result.phase is Phase.FAILED and failed_pods else failed_pods
    return TransferJobStatus(
        phase=result.phase,
        conditions=merge_conditions(previous.conditions, conditions, now, generation),
        start_time=parse_time(job_status.get("startTime")) or previous.start_time,
        completion_time=completion,
        job_name=job["metadata"]["name"] if job is not None else previous.job_name,
        epoch=progress.epoch,
        epochs=progress.epochs or tj.spec.training.epochs,
        metrics=progress.latest,
        history=history,
        best_epoch=best,
        test=progress.test,
        model=progress.model,
        restarts=restarts if restarts else None,
        observed_generation=generation,
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
