"""Job and pod facts -> a `Verdict` for `transferjob.status.job_status`: the pure half of the operator.

The trainer's events become `.status` in the SDK (`transferjob.status`), the same way for the local
backend; this module adds only what the Job and its pods say. The operator never guesses: the phase
follows the child Job's conditions, the reason for a failure is the most specific one available (the
Job's deadline, the trainer's own `failed` event from the termination message, then the kernel's OOM
kill, then the Job controller's reason with the exit code and the end of the output), and a pod that
cannot start says why on the resource, with what to do (the scheduler's message, the kubelet's
container errors and its mount failures, the Job controller's refused pods, a wait with no word at
all) instead of sitting in Pending silently; `runPolicy.pendingTimeoutSeconds` ends that wait. Pod
names and exit codes appear only in the words the operator writes itself, never appended to the
trainer's. Events are inputs here like pods: the reconciler reads the ones `event_subjects` asks for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from transferjob.models import Phase, TransferJob, TransferJobStatus, WorkerStatus
from transferjob.progress import Failed, Finished, decode
from transferjob.status import (
    TERMINAL_PHASES,
    Conditions,
    Progress,
    Verdict,
    closing_conditions,
    job_status,
    merge_conditions,
)
from transferjob.types import Json
from transferjob_operator.jobs import CONTAINER
from transferjob_operator.slim import COMPLETION_INDEX_LABEL

#: Container waiting reasons that mean the image will not arrive without someone fixing something.
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)
#: Container waiting reasons of a container the kubelet or the runtime cannot create or start.
CONTAINER_ERROR_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
#: Kubelet and attach/detach controller events that keep a scheduled pod in ContainerCreating.
MOUNT_EVENT_REASONS = frozenset({"FailedMount", "FailedAttachVolume"})
#: The Job controller's event when the API server refuses its pod (quota, admission policy).
FAILED_CREATE = "FailedCreate"

#: Conditions that post no Event: a job on its way to start is not news, and its start is the Running
#: Event.
SILENT_CONDITIONS = frozenset({"Starting"})

#: Conditions that are bad news: their events are Warnings.
WARNING_CONDITIONS = frozenset(
    {
        "Failed",
        "Unschedulable",
        "ImagePullFailed",
        "VolumeMountFailed",
        "ContainerStartFailed",
        "PodCreateFailed",
        "StartDelayed",
    }
)

#: A scheduled pod still in ContainerCreating this long after the last word about it is stuck.
STUCK_AFTER = 300.0
#: How long a pod may wait in ContainerCreating (or a Job without pods) before its events are read:
#: a normal start takes less, and is then never worth an API call.
EVENTS_AFTER = 5.0

#: What a user can do about each pod start problem, after the kubelet's or controller's own words.
_ADVICE = {
    "Unschedulable": "the pod waits until a node fits: lower spec.resources or change "
    "spec.resources.nodeSelector/tolerations, or add capacity",
    "UnboundClaim": "create the PersistentVolumeClaim that spec.data.source or spec.output.location "
    "names (or let it bind), or delete the TransferJob; the scheduler keeps retrying",
    "ImagePullFailed": "fix spec.resources.image or the registry credentials; the kubelet keeps retrying",
    "VolumeMountFailed": "create the folder or PersistentVolumeClaim that spec.data.source, "
    "spec.output.location (for a hostPath: its parent folder) or the fromJob upstream's output names, "
    "or delete the TransferJob; the kubelet keeps retrying",
    "CreateContainerConfigError": "the kubelet cannot build the trainer container's configuration: "
    "create the Secret or ConfigMap the message names, or fix the policy that added it; "
    "the kubelet keeps retrying",
    "CreateContainerError": "the container runtime cannot create the trainer container: check "
    "spec.resources.image and the node's runtime (kubectl describe pod)",
    "RunContainerError": "the container runtime cannot start the trainer container: check "
    "spec.resources.image (it must be a transferjob trainer image) and the node's runtime",
    "QuotaExceeded": "free quota in the namespace or raise it (kubectl describe resourcequota), or lower "
    "spec.resources; the Job controller keeps retrying",
    "FailedCreate": "fix what the message names (an admission policy, a LimitRange); the Job "
    "controller keeps retrying",
    "StartDelayed": "check the node and the pod (kubectl describe pod, kubectl get events)",
}
_BOUND = " (runPolicy.pendingTimeoutSeconds bounds the wait)"


@dataclass(frozen=True)
class Gate:
    """Why a TransferJob has no Job yet (fromJob waiting or failed, invalid spec, name conflict)."""

    phase: Phase
    condition: str
    reason: str
    message: str
    seen: Conditions = field(default_factory=dict)
    """Problems that held when the gate ended the job (a pending timeout's pod problems): recorded as
    closed conditions even when no status write showed them True before."""


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


def _terminations(pods: Iterable[Json]) -> list[Termination]:
    """The trainer exits among a Job's pods, the one that explains the outcome last: the newest pod's,
    except that a permanent failure (bad data, a bad spec) outranks any other. In a worker group the
    pods start together, and a worker that fails permanently fails the Job (podFailurePolicy), which
    then stops the others: their exits (terminated, or collectives cut off) follow it, but say nothing
    about why the job failed."""
    ended = [t for t in (termination_of(p) for p in _by_creation(pods)) if t is not None]
    return sorted(ended, key=lambda t: isinstance(t.event, Failed) and t.event.permanent)


def latest_termination(pods: Iterable[Json]) -> Termination | None:
    """The trainer exit that explains a Job's outcome (`_terminations`)."""
    ended = _terminations(pods)
    return ended[-1] if ended else None


def with_terminations(progress: Progress, pods: Iterable[Json]) -> Progress:
    """Progress completed with the final events from termination messages (they survive missed logs)."""
    merged = progress.copy()
    for term in _terminations(pods):
        event = term.event
        if event is not None:
            merged.apply(event)
    return merged


def _key(when: dt.datetime | None) -> dt.datetime:
    return when or dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def event_time(event: Json) -> dt.datetime | None:
    """When an event (core/v1, possibly a series) was last observed."""
    series = event.get("series") or {}
    return parse_time(
        series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or event.get("metadata", {}).get("creationTimestamp")
    )


def _events_about(uid: str | None, events: Iterable[Json], after: dt.datetime | None = None) -> list[Json]:
    """The events about one object, oldest first (optionally only those observed after `after`)."""
    about = [e for e in events if uid and (e.get("involvedObject") or {}).get("uid") == uid]
    stamped = [(event_time(e), e) for e in about]
    kept = [(t, e) for t, e in stamped if after is None or (t is not None and t >= after)]
    return [e for _t, e in sorted(kept, key=lambda te: _key(te[0]))]


def duration(seconds: float) -> str:
    """A wait as a person reads it: 45s, 5m10s, 2h3m."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _with_advice(detail: str, advice_key: str) -> str:
    return f"{detail.rstrip('.')}; {_ADVICE[advice_key]}{_BOUND}"


def problem_detail(message: str) -> str:
    """A pod problem condition's message without the advice `_with_advice` added."""
    for advice in _ADVICE.values():
        suffix = f"; {advice}{_BOUND}"
        if message.endswith(suffix):
            return message[: -len(suffix)]
    return message


def _scheduled_at(pod: Json) -> dt.datetime | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "True":
            return parse_time(cond.get("lastTransitionTime")) or parse_time(
                pod["metadata"].get("creationTimestamp")
            )
    return None


def _live(pod: Json) -> bool:
    """A pod that is not being deleted and has not ended."""
    return not pod.get("metadata", {}).get("deletionTimestamp") and pod.get("status", {}).get("phase") in (
        None,
        "Pending",
        "Running",
    )


def creating_since(pod: Json) -> dt.datetime | None:
    """When a scheduled pod whose trainer container has not been created yet was scheduled; else None.

    This is the kubelet's `ContainerCreating`: volumes are being mounted (or fail to), the image is
    being pulled. A container waiting for another reason (an image pull error, a config error) has
    got past the mounts and says why itself.
    """
    if not _live(pod) or pod.get("status", {}).get("phase") == "Running":
        return None
    scheduled = _scheduled_at(pod)
    if scheduled is None:
        return None
    state = _trainer_status(pod).get("state")
    if not state:
        return scheduled
    waiting = state.get("waiting")
    if waiting is not None and waiting.get("reason") in (None, "", "ContainerCreating"):
        return scheduled
    return None


def _job_started(job: Json) -> dt.datetime | None:
    """When the Job began its current run: created, or resumed from suspend (the Job controller resets
    `startTime` then)."""
    return parse_time(job.get("status", {}).get("startTime"))


def job_finished(job: Json) -> bool:
    """Whether the Job controller has decided the Job's end (it may still be deleting pods)."""
    return any(_condition(job, t) for t in ("Complete", "Failed", "FailureTarget"))


def _job_active(job: Json | None) -> bool:
    """A Job that should have a pod: not suspended, not finished."""
    return job is not None and not job.get("spec", {}).get("suspend") and not job_finished(job)


def starting(job: Json, pods: Iterable[Json]) -> bool:
    """Whether the Job should have a running pod and has none yet that got past ContainerCreating."""
    live = [p for p in pods if _live(p)]
    return _job_active(job) and (not live or any(creating_since(p) is not None for p in live))


def event_subjects(job: Json | None, pods: Iterable[Json], now: dt.datetime) -> list[str]:
    """The uids whose events may explain a pod that is not starting, once the wait is no longer normal.

    A pod that has been in ContainerCreating for `EVENTS_AFTER` (a failed mount says so only in an
    event), and the Job when it has had no pod for that long (the Job controller's FailedCreate).
    """
    pods = list(pods)
    uids = []
    for pod in pods:
        since = creating_since(pod)
        if since is not None and (now - since).total_seconds() >= EVENTS_AFTER:
            uids.append(str(pod["metadata"].get("uid")))
    if job is not None and _job_active(job) and not any(_live(p) for p in pods):
        started = _job_started(job) or parse_time(job["metadata"].get("creationTimestamp"))
        if started is not None and (now - started).total_seconds() >= EVENTS_AFTER:
            uids.append(str(job["metadata"].get("uid")))
    return [uid for uid in uids if uid and uid != "None"]


def _pod_problems(pod: Json, events: list[Json], now: dt.datetime, stuck_after: float) -> Conditions:
    """Why this one pod is not starting: condition type -> (reason, message)."""
    name = pod["metadata"]["name"]
    problems: Conditions = {}
    for cond in pod.get("status", {}).get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            detail = cond.get("message") or "the scheduler found no node for the pod"
            advice = "UnboundClaim" if "persistentvolumeclaim" in detail.lower() else "Unschedulable"
            problems["Unschedulable"] = ("Unschedulable", _with_advice(detail, advice))
    waiting = (_trainer_status(pod).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in IMAGE_PULL_REASONS:
        image = pod.get("spec", {}).get("containers", [{}])[0].get("image", "")
        detail = f"image {image}: {waiting.get('message') or reason}"
        problems["ImagePullFailed"] = (reason, _with_advice(detail, "ImagePullFailed"))
    elif reason in CONTAINER_ERROR_REASONS:
        detail = f"pod {name}: container {CONTAINER}: {waiting.get('message') or reason}"
        problems["ContainerStartFailed"] = (reason, _with_advice(detail, reason))
    since = creating_since(pod)
    if since is None:
        return problems
    about = _events_about(pod["metadata"].get("uid"), events)
    mounts = [e for e in about if e.get("type") == "Warning" and e.get("reason") in MOUNT_EVENT_REASONS]
    if mounts:
        last = mounts[-1]
        detail = f"pod {name}: {last.get('message') or last['reason']}"
        problems["VolumeMountFailed"] = (str(last["reason"]), _with_advice(detail, "VolumeMountFailed"))
        return problems
    heard = max([t for t in (event_time(e) for e in about) if t is not None] + [since])
    if (now - heard).total_seconds() >= stuck_after:
        detail = (
            f"pod {name} has been in ContainerCreating for {duration((now - since).total_seconds())}, "
            f"with no event about it for {duration((now - heard).total_seconds())}"
        )
        if about:
            last = about[-1]
            detail += f" (the last: {last.get('reason')}: {last.get('message')})"
        problems["StartDelayed"] = ("ContainerCreating", _with_advice(detail, "StartDelayed"))
    return problems


def _job_problems(job: Json | None, pods: list[Json], events: list[Json]) -> Conditions:
    """Why the Job has no pod: the Job controller's FailedCreate since the newest pod was created."""
    if job is None or not _job_active(job) or any(_live(p) for p in pods):
        return {}
    newest = max((parse_time(p["metadata"].get("creationTimestamp")) for p in pods), default=None, key=_key)
    refused = [
        e
        for e in _events_about(job["metadata"].get("uid"), events, after=newest)
        if e.get("type") == "Warning" and e.get("reason") == FAILED_CREATE
    ]
    if not refused:
        return {}
    message = str(refused[-1].get("message") or FAILED_CREATE)
    reason = "QuotaExceeded" if "exceeded quota" in message else FAILED_CREATE
    detail = f"the Job controller cannot create the training pod: {message}"
    return {"PodCreateFailed": (reason, _with_advice(detail, reason))}


def pod_problems(
    pods: Iterable[Json],
    events: Iterable[Json] = (),
    now: dt.datetime | None = None,
    job: Json | None = None,
    stuck_after: float = STUCK_AFTER,
) -> Conditions:
    """Why the training pod is not starting: condition type -> (reason, message that says what to do).

    From the pods (the scheduler's and the kubelet's words in their status), their events (mount
    failures, which only events report; a pod in ContainerCreating with no word for `stuck_after`
    seconds) and the Job's events (the Job controller's FailedCreate: quota, admission). The newest
    pod's problems win.
    """
    pods = _by_creation(pods)
    events = list(events)
    problems = _job_problems(job, pods, events)
    for pod in pods:
        if _live(pod) and pod.get("status", {}).get("phase") != "Running":
            problems.update(_pod_problems(pod, events, now or dt.datetime.now(dt.timezone.utc), stuck_after))
    return problems


#: Conditions about one pod that no longer apply once that pod is gone, whether or not they resolved.
POD_CONDITIONS = (
    "Unschedulable",
    "ImagePullFailed",
    "VolumeMountFailed",
    "ContainerStartFailed",
    "StartDelayed",
)


def _pod_gone(pods: Iterable[Json]) -> Conditions:
    """With no live pod, a pod's problem ends because the pod was deleted (or failed), not resolved."""
    if any(_live(p) for p in pods):
        return {}
    gone = ("PodDeleted", "ended without resolving: the pod was deleted before it started")
    return dict.fromkeys(POD_CONDITIONS, gone)


def trainer_ran(pod: Json) -> bool:
    """Whether the trainer container of this pod ever ran (a start error or a never-created container
    that was cleaned up does not count)."""
    status = _trainer_status(pod)
    if (status.get("state") or {}).get("running"):
        return True
    never = {"StartError", "ContainerCannotRun", "ContainerStatusUnknown"}
    for state in (status.get("state") or {}, status.get("lastState") or {}):
        term = state.get("terminated")
        if term and term.get("reason") not in never:
            return True
    return False


def pending_deadline(tj: TransferJob, job: Json | None) -> dt.datetime | None:
    """When `runPolicy.pendingTimeoutSeconds` runs out for the Job's current run (None: no limit yet)."""
    limit = tj.spec.run_policy.pending_timeout_seconds
    if limit is None or job is None or job.get("spec", {}).get("suspend"):
        return None
    started = _job_started(job)
    return started + dt.timedelta(seconds=limit) if started is not None else None


def pending_timeout(
    tj: TransferJob,
    job: Json | None,
    pods: list[Json],
    events: list[Json],
    previous: TransferJobStatus | None,
    now: dt.datetime,
) -> Gate | None:
    """Failed/PendingTimeout when no trainer ran `pendingTimeoutSeconds` after the Job (re)started.

    The clock starts when the Job starts (created, or resumed): waiting for a `fromJob` upstream does
    not count. The message carries the last pod start problem seen: the current one, or the one the
    previous status showed (the pods may be gone once the Job was stopped). A Job that ended before
    the deadline ended for its own reason, which stands.
    """
    deadline = pending_deadline(tj, job)
    if job is None or deadline is None or now < deadline or _condition(job, "Complete"):
        return None
    if any(trainer_ran(p) for p in pods):
        return None
    ended = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if ended is not None and _key(parse_time(ended.get("lastTransitionTime"))) < deadline:
        return None
    limit = tj.spec.run_policy.pending_timeout_seconds
    problems = pod_problems(pods, events, now, job)
    seen = [(t, r, problem_detail(m)) for t, (r, m) in sorted(problems.items())]
    if not seen and previous is not None:
        seen = [
            (c.type, c.reason, problem_detail(c.message))
            for c in previous.conditions
            if c.status == "True" and c.type in WARNING_CONDITIONS and c.type != "Failed"
        ]
    last = "; ".join(f"{reason}: {detail}" for _t, reason, detail in seen)
    message = (
        f"the training pod did not start running within runPolicy.pendingTimeoutSeconds ({limit}s) "
        f"of the Job starting, so the Job was stopped; "
        + (f"last problem seen: {last}" if last else "no problem was reported")
        + "; fix it and create the TransferJob again"
    )
    return Gate(Phase.FAILED, "Failed", "PendingTimeout", message, seen=problems)


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


def verdict(
    tj: TransferJob,
    job: Json | None,
    pods: list[Json],
    gate: Gate | None,
    events: list[Json] | None = None,
    now: dt.datetime | None = None,
) -> Verdict:
    """Where the TransferJob stands, from its Job, pods and their events (or the gate that holds it
    back or ended it: `fromJob`, a pending timeout)."""
    if gate is not None and (job is None or gate.phase is Phase.FAILED):
        return Verdict(gate.phase, {gate.condition: (gate.reason, gate.message)}, ended=gate.seen)
    if job is None:
        return Verdict(Phase.PENDING)
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
    waiting = waiting_workers(pods) if tj.spec.resources.workers > 1 else []
    if running is not None and waiting:
        return Verdict(Phase.PENDING, pod_problems(waiting, events or [], now, job))
    if running is not None:
        pod = running["metadata"]["name"]
        return Verdict(Phase.RUNNING, {"Running": ("Running", f"pod {pod} is running")})
    return Verdict(Phase.PENDING, pod_problems(pods, events or [], now, job), closing=_pod_gone(pods))


def restarts(job: Json | None, phase: Phase, workers: int = 1) -> int:
    """Training pods that failed and were replaced by a new one."""
    job_status = (job or {}).get("status", {})
    # Failed pods that a new pod replaced: the last failure of a failed job was not retried, nor (in a
    # group of `workers`) the last failure of each worker that did not succeed: the failing Job stops
    # them all at once. The Job controller counts a failed pod in `failed` only after it has dropped
    # the pod's tracking finalizer; until then (FailureTarget may already be set) the pod is in
    # uncountedTerminatedPods.
    uncounted = (job_status.get("uncountedTerminatedPods") or {}).get("failed") or []
    failed_pods = int(job_status.get("failed", 0) or 0) + len(uncounted)
    if phase is not Phase.FAILED or not failed_pods:
        return failed_pods
    unfinished = max(1, workers - int(job_status.get("succeeded", 0) or 0))
    return max(0, failed_pods - unfinished)


def _by_index(pods: Iterable[Json]) -> dict[int, list[Json]]:
    """A worker group's pods by worker index (completion-index label), oldest first; {} for one worker."""
    by_index: dict[int, list[Json]] = {}
    for pod in _by_creation(pods):
        index = (pod["metadata"].get("labels") or {}).get(COMPLETION_INDEX_LABEL)
        if index is not None and index.isdigit():
            by_index.setdefault(int(index), []).append(pod)
    return by_index


def waiting_workers(pods: Iterable[Json]) -> list[Json]:
    """The newest pod of each worker that is not running (nor done): while one waits, the group waits.

    Workers that did start hold their devices at the strategy's rendezvous until the others join, so
    the job is Pending, with the waiting pods' reasons, not Running.
    """
    newest = [group[-1] for group in _by_index(pods).values()]
    return [p for p in newest if p.get("status", {}).get("phase") not in ("Running", "Succeeded")]


#: `.status.workers[].phase` of a worker whose pod was deleted before it finished (see `worker_states`).
REMOVED = "Removed"


def worker_states(
    pods: Iterable[Json], previous: Iterable[WorkerStatus] = (), finished: bool = False
) -> list[WorkerStatus]:
    """Each worker's newest pod and its failed pods, from the pods' completion-index labels.

    A worker keeps its place once seen, though its pods go: the Job controller deletes the pods still
    running when the chief finishes (successPolicy), someone deletes a pod, a finished Job's pods are
    garbage-collected. Its last known pod then stays, with phase Removed if that pod had not finished,
    and failures never go down (failed pods that were deleted were still failures). Once the Job has
    `finished`, a pod still Pending or Running is one the Job controller is deleting: Removed too, so a
    finished job never shows a worker as running; so is one that failed while being deleted then (the
    SIGTERM's exit code), which counts as no failure.
    """
    by_index = _by_index(pods)
    known = {w.index: w for w in previous}
    states = []
    for index in sorted(set(by_index) | set(known)):
        group = by_index.get(index)
        before = known.get(index)
        if group is None:
            assert before is not None
            phase = before.phase if before.phase in ("Succeeded", "Failed") else REMOVED
            states.append(before.model_copy(update={"phase": phase}))
            continue
        # A pod the Job controller stops once the Job has finished (being deleted) did not fail: its
        # exit code is that of the SIGTERM it was sent.
        stopped = [finished and bool(p["metadata"].get("deletionTimestamp")) for p in group]
        failures = sum(
            1
            for p, gone in zip(group, stopped, strict=True)
            if p.get("status", {}).get("phase") == "Failed" and not gone
        )
        phase = str(group[-1].get("status", {}).get("phase") or "Pending")
        if finished and (phase in ("Pending", "Running") or (stopped[-1] and phase == "Failed")):
            phase = REMOVED
        states.append(
            WorkerStatus(
                index=index,
                pod=group[-1]["metadata"]["name"],
                phase=phase,
                failures=max(failures, before.failures if before is not None else 0),
            )
        )
    return states


def status_from_job_and_pods(
    tj: TransferJob,
    job: Json | None,
    pods: list[Json],
    progress: Progress,
    now: dt.datetime,
    gate: Gate | None = None,
    events: list[Json] | None = None,
) -> TransferJobStatus:
    """The whole `.status` for a TransferJob: `job_status` of the trainer's events and the Job's verdict.

    `progress` holds the events read from the pods' logs; the final events in the pods' termination
    messages are added here (they survive a missed log line or an operator restart). `events` are the
    core/v1 Events about the pods and the Job that `event_subjects` asked for.
    """
    result = verdict(tj, job, pods, gate, events, now)
    return job_status(
        with_terminations(progress, pods),
        result,
        tj.spec,
        tj.status,
        now,
        tj.metadata.generation,
        start_time=parse_time((job or {}).get("status", {}).get("startTime")),
        job_name=job["metadata"]["name"] if job is not None else None,
        restarts=restarts(job, result.phase, tj.spec.resources.workers),
    ).model_copy(update={"workers": _workers(tj, pods, result.phase in TERMINAL_PHASES)})


def _workers(tj: TransferJob, pods: list[Json], finished: bool) -> list[WorkerStatus]:
    if tj.spec.resources.workers <= 1:
        return []
    return worker_states(pods, tj.status.workers if tj.status is not None else [], finished)


@dataclass(frozen=True)
class Transition:
    """One Kubernetes Event to post: a condition that just became True."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str


def transitions(before: TransferJobStatus | None, after: TransferJobStatus) -> list[Transition]:
    """The Events for a status change: one per condition that turned True (or changed reason)."""
    old = {c.type: c for c in (before.conditions if before else [])}
    # A condition closed by the outcome of another (a WaitingForJob ended by UpstreamFailed) gets no
    # Event of its own: the outcome's Warning says it.
    outcomes = {c.reason for c in after.conditions if c.status == "True"}
    events = []
    for cond in after.conditions:
        if cond.type in SILENT_CONDITIONS:
            continue
        prior = old.get(cond.type)
        if cond.status != "True":
            if prior is not None and prior.status == "True" and cond.reason not in outcomes:
                message = f"{cond.type} no longer applies" + (f": {cond.message}" if cond.message else "")
                events.append(Transition("Normal", cond.reason, message))
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
    failed = {"Failed": ("InvalidSpec", "; ".join(problems))}
    return TransferJobStatus(
        phase=Phase.FAILED,
        conditions=merge_conditions(
            previous.conditions, failed, now, generation, closing_conditions(Phase.FAILED, failed)
        ),
        completion_time=previous.completion_time or now,
        observed_generation=generation,
    )
