"""The reconciler: level-triggered steps of TransferJobs on a work queue, and the writes they need.

Why not one kopf daemon per TransferJob (the first design): a daemon makes kopf put a finalizer on
every TransferJob (one more write and watch event per job, and a job that cannot be deleted while no
operator runs), keeps the whole body and an asyncio task per object in memory, and needs an extra
status write before the Job exists. Here kopf only watches: its event handlers (`handlers`) keep a
slim copy of each TransferJob in `Reconciler.store` and call `wake`; the Jobs and pods live in kopf's
slim indexes (copies made by `slim`). The workers of a `workqueue.WorkQueue` take the keys and run
`step`, which reads those copies, decides with the pure functions (`jobs`, `status`, `upstream`,
`tracking`) and makes at most a few calls. The queue knows nothing of TransferJobs; it provides:

* **one writer per TransferJob**: a key is never stepped by two workers at once; a wake-up during a
  step queues it again afterwards;
* **coalesced**: a key is stepped at most once per `interval` (status patches <= 1/s/job, however fast
  the trainer prints), except that a job's first step (which creates its Job) runs at once.

This module decides what a step does and when time alone must bring the next one:

* **time-driven outcomes keep timers**: `fromJob` waiting (every interval), the TTL deadline, a
  deferred status write, an API error (retry), a pod that has not started (its Events every
  `START_POLL_SECONDS`, since a failed mount or a refused pod changes no watched object; the
  pending timeout), and a once-a-minute resync of unfinished jobs;
* **Jobs first**: in a burst of new TransferJobs (a Job created less than `BURST_QUIET` ago) the status
  write and the Events of jobs that are only Pending or Suspended wait (at most `MAX_DEFER`),
  so the API server's capacity goes to creating Jobs; status of running or finished jobs never waits.

Only jobs that need it have a `JobState` (unfinished ones, finished ones with a TTL); the state is
rebuildable from the cluster, so an operator restart or a peering hand-over loses nothing.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubernetes.client.rest import ApiException

from transferjob.constants import DEFAULT_TRAINER_IMAGE
from transferjob.errors import SpecError
from transferjob.models import Phase, TransferJob, TransferJobStatus, parse_spec
from transferjob.status import TERMINAL_PHASES, Progress
from transferjob.types import Json
from transferjob_operator import jobs, metrics, status
from transferjob_operator.kube import ConflictError, Kube, LogFollower, owned_by
from transferjob_operator.slim import (
    COMPLETION_INDEX_LABEL,
    fingerprint,
    slim_job,
    slim_transferjob,
    slim_transferjob_status,
)
from transferjob_operator.tracking import SharedProgress
from transferjob_operator.upstream import DEFAULT_UPSTREAM_TIMEOUT, cycle_gate, from_job_cycle, upstream_gate
from transferjob_operator.workqueue import WorkQueue

Key = tuple[str | None, str]
R = TypeVar("R")

log = logging.getLogger("transferjob_operator")

#: An unfinished job is stepped at least this often, whatever it was told (a cheap no-op when nothing
#: changed): the level-triggered safety net under the event-driven wake-ups.
RESYNC_SECONDS = 60.0
#: A burst is on while a Job was created less than this long ago.
BURST_QUIET = 1.0
#: The longest a Pending/Suspended status write waits for a burst to end.
MAX_DEFER = 30.0
#: Phases whose status write may wait for a burst to end: there are no metrics to show yet.
DEFERRABLE = frozenset({Phase.PENDING, Phase.SUSPENDED})
#: A failed step (API error, API server unreachable) is retried after this long.
RETRY_SECONDS = 2.0
#: While a Job's pod has not started (ContainerCreating, or no pod), its Events are read this often.
START_POLL_SECONDS = 5.0


async def _call(pool: ThreadPoolExecutor, fn: Callable[..., R], *args: Any) -> R:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def needs_supervision(body: Mapping[str, Any]) -> bool:
    """Unfinished jobs, and finished ones with a TTL to enforce; finished ones need nothing else."""
    phase = (body.get("status") or {}).get("phase")
    finished = phase in (Phase.SUCCEEDED.value, Phase.FAILED.value)
    return (
        not finished
        or (body.get("spec") or {}).get("runPolicy", {}).get("ttlSecondsAfterFinished") is not None
    )


class JobState:
    """What the reconciler remembers of one supervised TransferJob between steps (rebuildable)."""

    __slots__ = (
        "announced",
        "created_job",
        "deferred_since",
        "due",
        "events",
        "followers",
        "inputs",
        "parsed",
        "previous",
        "progress",
        "replayed",
        "uid",
        "unposted",
        "written",
    )

    def __init__(self, uid: str, written: Json) -> None:
        self.uid = uid
        #: The status last written (or found when the state was made), as a dict.
        self.written = written
        #: The status whose transitions were last announced as Events (None: the one last written).
        self.announced: TransferJobStatus | None = None
        #: Events decided but not posted yet (they go out with the next status write).
        self.unposted: list[status.Transition] = []
        self.previous: tuple[TransferJobStatus | None] | None = None
        self.parsed: tuple[Any, TransferJob | SpecError] | None = None
        self.progress: SharedProgress | None = None
        self.followers: dict[str, LogFollower] = {}
        self.replayed: set[str] = set()
        self.created_job: Json | None = None
        #: The Events last read about a pod or Job that does not start, by its uid.
        self.events: dict[str, list[Json]] = {}
        #: What the last completed step read; the same inputs again make a step a no-op.
        self.inputs: tuple[Any, ...] | None = None
        #: When the last step's outcome expires by itself (fromJob waiting, TTL, deferral, retry).
        self.due: float | None = None
        self.deferred_since: float | None = None

    def close(self) -> None:
        for follower in self.followers.values():
            follower.stop()
        self.followers.clear()

    def previous_status(self) -> TransferJobStatus | None:
        """The status last written, as a model; parsed once per write."""
        if self.previous is None:
            try:
                model = TransferJobStatus.model_validate(self.written) if self.written else None
            except ValueError:
                model = None
            self.previous = (model,)
        return self.previous[0]

    def followed(self, pods: list[Json]) -> bool:
        """Whether every running pod's log has a live follower."""
        return all(
            pod["metadata"]["name"] in self.followers and self.followers[pod["metadata"]["name"]].alive
            for pod in pods
            if pod.get("status", {}).get("phase") == "Running"
        )


class Reconciler:
    """The store, the states, and one step per TransferJob on a work queue; see the module docstring."""

    def __init__(
        self,
        kube: Kube,
        interval: float = 1.0,
        upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
        workers: int = 32,
        reporter: str = "transferjob-operator",
        trainer_image: str = DEFAULT_TRAINER_IMAGE,
    ) -> None:
        self.kube = kube
        self.trainer_image = trainer_image
        self.interval = interval
        self.upstream_timeout = upstream_timeout
        self.reporter = reporter
        #: Slim TransferJobs by key, kept by the watch handlers.
        self.store: dict[Key, Json] = {}
        self.states: dict[Key, JobState] = {}
        #: uids of jobs whose final status this process wrote: a late echo of an older status of theirs
        #: (the watch lags behind our own writes) must not start supervising them again.
        self.finished: set[str] = set()
        #: kopf's indexes of training Jobs and pods by TransferJob key (attached once they are ready).
        self.job_index: Mapping[Key, Iterable[Json]] = {}
        self.pod_index: Mapping[Key, Iterable[Json]] = {}
        self.queue: WorkQueue[Key] = WorkQueue(self._process, interval, workers, name="tj-reconciler")
        self._creating = 0
        self._last_creation = float("-inf")
        # Job creation has its own threads, so that in a burst a new TransferJob's Job does not queue
        # behind status patches; status and Job patches, Events, log reads and deletions share others.
        # Under load one POST takes ~0.1-0.4 s, so keeping up with ~50 TransferJobs/s takes ~20 calls
        # in flight.
        self._create_pool = ThreadPoolExecutor(max_workers=24, thread_name_prefix="tj-create")
        self._write_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tj-write")

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def active(self) -> bool:
        """False while paused: watch events and wake-ups are ignored."""
        return self.queue.active

    def start(self) -> None:
        """Start the workers on the running loop (kopf's, from its startup handler)."""
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()
        self.pause()
        self._create_pool.shutdown(wait=False, cancel_futures=True)
        self._write_pool.shutdown(wait=False, cancel_futures=True)

    def pause(self) -> None:
        """Another replica acts (peering) or the operator stops: drop all work and forget everything.

        kopf lists every object again when it resumes, which rebuilds the store and the states.
        """
        self.queue.pause()
        for state in self.states.values():
            state.close()
        self.states.clear()
        self.store.clear()
        self.finished.clear()

    def resume(self) -> None:
        self.queue.resume()

    # ------------------------------------------------------------------------------------ the store
    # The store, the states and the queue belong to the event loop's thread; log followers and sync
    # callers come in from other threads, and `queue.hand_over` passes their calls on to the loop.

    def observe(self, body: Mapping[str, Any]) -> None:
        """A TransferJob was listed, added or modified: keep its slim copy; step it if supervised."""
        if self.queue.hand_over(self.observe, body) or not self.active:
            return
        meta = body.get("metadata", {})
        key: Key = (meta.get("namespace"), meta.get("name"))
        self.store[key] = slim_transferjob(body)
        state = self.states.get(key)
        if state is not None and state.uid != meta.get("uid"):  # deleted and created again
            self._drop(key)
            state = None
        if state is None:
            if not needs_supervision(body) or meta.get("uid") in self.finished:
                return
            self.states[key] = JobState(meta.get("uid", ""), copy.deepcopy(dict(body.get("status") or {})))
        self.wake(key)

    def forget(self, key: Key) -> None:
        """A TransferJob was deleted: its children go by garbage collection; stop following them."""
        if self.queue.hand_over(self.forget, key):
            return
        stored = self.store.pop(key, None)
        if stored is not None:
            self.finished.discard(stored["metadata"].get("uid"))
        self._drop(key)

    def _drop(self, key: Key) -> None:
        state = self.states.pop(key, None)
        if state is not None:
            state.close()
            self.queue.forget(key)

    # ------------------------------------------------------------------------------------ the queue

    def wake(self, key: Key) -> None:
        """Something a supervised job reads changed: step it now, or when its interval has passed."""
        if self.queue.hand_over(self.wake, key):
            return
        if key in self.states:
            self.queue.wake(key)

    def _schedule(self, key: Key, state: JobState) -> None:
        """After a step: the next wake-up that time alone brings (due outcome or resync)."""
        delay = RESYNC_SECONDS
        if state.due is not None:
            delay = min(delay, max(0.0, state.due - time.time()))
        self.queue.wake_in(key, delay)

    async def _process(self, key: Key) -> None:
        """The queue's step: one `step` of a supervised job, a retry on failure, then its next timer."""
        state = self.states.get(key)
        if state is None:
            return
        started = time.monotonic()
        try:
            stepped = await self.step(key, state)
        except Exception as error:
            if isinstance(error, ApiException):
                log.warning("%s/%s: API error, retrying: %s %s", *key, error.status, error.reason)
            else:
                log.exception("%s/%s: reconcile failed, retrying", *key)
            state.due = time.time() + RETRY_SECONDS
            state.inputs = None
            stepped = True
        if stepped:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        if self.states.get(key) is not state:
            return  # deleted, finished for good, or paused meanwhile
        if state.due is None and not state.followers:
            # Settled (e.g. Suspended, waiting for pods): only the resync will look again; the
            # parsed models (~10 KiB a job) are cheaper to rebuild then than to keep.
            state.parsed = None
            state.previous = None
        self._schedule(key, state)

    # ---------------------------------------------------------------------------------- the burst

    @property
    def bursting(self) -> bool:
        """Jobs are being created: new TransferJobs are arriving faster than one per `BURST_QUIET`."""
        return self._creating > 0 or time.monotonic() - self._last_creation < BURST_QUIET

    # ------------------------------------------------------------------------------------- the step

    async def step(self, key: Key, state: JobState) -> bool:
        """One reconcile; False when nothing it reads changed since the last one (nothing done)."""
        body = self.store.get(key)
        if body is None:
            self._drop(key)
            return False
        job = next(
            (j for j in self.job_index.get(key, ()) if owned_by(j, state.uid)),
            state.created_job,
        )
        job_uid = (job or {}).get("metadata", {}).get("uid")
        pods = [p for p in self.pod_index.get(key, ()) if job_uid and owned_by(p, job_uid)]
        inputs = (
            body["metadata"].get("resourceVersion"),
            fingerprint(job),
            frozenset(fingerprint(p) for p in pods),
            state.progress.version if state.progress is not None else 0,
        )
        if inputs == state.inputs and (state.due is None or time.time() < state.due) and state.followed(pods):
            return False
        state.due = None
        state.inputs = None  # set again only when the step completes
        done = await self._reconcile(key, state, body, job, pods)
        if done:
            state.inputs = inputs
        return True

    def _parse(self, state: JobState, body: Json) -> TransferJob | SpecError:
        """The stored TransferJob as models, parsed again only when its spec or labels changed."""
        meta = body["metadata"]
        cache_key = (meta.get("generation"), tuple(sorted((meta.get("labels") or {}).items())))
        if state.parsed is None or state.parsed[0] != cache_key:
            raw = {k: v for k, v in body.items() if k != "status"}
            try:
                parse_spec(raw.get("spec") or {})
                parsed: TransferJob | SpecError = TransferJob.from_dict({**raw, "status": None})
            except SpecError as error:
                parsed = error
            state.parsed = (cache_key, parsed)
        return state.parsed[1]

    async def _reconcile(
        self, key: Key, state: JobState, body: Json, job: Json | None, pods: list[Json]
    ) -> bool:
        """Create what is missing and write the status; False when the step must run again."""
        now = _now()
        previous = state.previous_status()
        parsed = self._parse(state, body)
        if isinstance(parsed, SpecError):
            generation = body["metadata"].get("generation")
            invalid = status.invalid_spec_status(previous, parsed.problems, generation, now)
            return await self._write(key, state, body, invalid, previous)
        tj = parsed.model_copy(update={"status": previous})

        if previous is not None and previous.phase in TERMINAL_PHASES:
            await self._expire(key, state, body, tj, previous, now)
            return True

        gate: status.Gate | None = None
        events: list[Json] = []
        if job is None:
            gate, job = await self._create(key, state, body, tj, now)
            if gate is not None:
                state.due = time.time() + self.interval  # waiting for fromJob: look again
        else:
            events = await self._events(key, state, job, pods, now)
            gate = status.pending_timeout(tj, job, pods, events, previous, now)
            if gate is not None:
                await self._stop(key, state, job)
            else:
                await self._pass_on(key, state, tj, job)
                self._watch_start(state, tj, job, pods)

        await self._follow(key, state, pods)
        progress = state.progress.snapshot() if state.progress is not None else Progress()
        new = status.status_from_job_and_pods(tj, job, pods, progress, now, gate, events)
        return await self._write(key, state, body, new, previous)

    async def _pass_on(self, key: Key, state: JobState, tj: TransferJob, job: Json) -> None:
        """Pass changes of `runPolicy.suspend` and `activeDeadlineSeconds` on to the Job."""
        patch = jobs.job_spec_patch(tj, job)
        if patch is not None:
            name = job["metadata"]["name"]
            await _call(self._write_pool, self.kube.patch_job, key[0] or "", name, patch)
            state.unposted.append(status.Transition("Normal", "JobUpdated", f"Job {name}: {patch['spec']}"))

    async def _events(
        self, key: Key, state: JobState, job: Json, pods: list[Json], now: dt.datetime
    ) -> list[Json]:
        """The Events that may say why the pod does not start (only for pods that wait unusually long).

        In a burst (Jobs first) and when a read fails, the Events read last time stand in: a step
        without them would close a `VolumeMountFailed` that still applies. A failed read costs a
        warning, not the step.
        """
        subjects = status.event_subjects(job, pods, now)
        state.events = {uid: state.events[uid] for uid in subjects if uid in state.events}
        if not self.bursting:
            for uid in subjects:
                try:
                    state.events[uid] = await _call(
                        self._write_pool, self.kube.list_events, key[0] or "", uid
                    )
                except ApiException as error:
                    log.warning("%s/%s: cannot read Events: %s %s", *key, error.status, error.reason)
        return [event for found in state.events.values() for event in found]

    def _watch_start(self, state: JobState, tj: TransferJob, job: Json, pods: list[Json]) -> None:
        """While the pod has not started, look again: a mount failure or a refused pod changes no
        object the operator watches (only Events say so), and the pending timeout runs out by time."""
        due = []
        if status.starting(job, pods):
            due.append(time.time() + START_POLL_SECONDS)
        deadline = status.pending_deadline(tj, job)
        if deadline is not None and not status.job_finished(job) and not any(map(status.trainer_ran, pods)):
            due.append(deadline.timestamp())
        if due:
            state.due = min(due)

    async def _stop(self, key: Key, state: JobState, job: Json) -> None:
        """Stop a Job whose pod never started (pendingTimeoutSeconds): a deadline already past makes the
        Job controller fail it and delete its pods, with no retry; the operator may not delete Jobs."""
        if not status.job_finished(job) and job.get("spec", {}).get("activeDeadlineSeconds") != 1:
            name = job["metadata"]["name"]
            patch = {"spec": {"activeDeadlineSeconds": 1}}
            await _call(self._write_pool, self.kube.patch_job, key[0] or "", name, patch)
            state.unposted.append(
                status.Transition(
                    "Normal", "JobStopped", f"Job {name}: its pod did not start within pendingTimeoutSeconds"
                )
            )

    async def _create(
        self, key: Key, state: JobState, body: Json, tj: TransferJob, now: dt.datetime
    ) -> tuple[status.Gate | None, Json | None]:
        """Create the Job, unless `fromJob` holds the job back."""
        upstream = None
        source = tj.spec.model.from_job
        if source is not None:
            cycle = from_job_cycle(key, self.store)
            if cycle is not None:
                return cycle_gate(cycle), None
            upstream = self.store.get((key[0], source))
        decision = upstream_gate(tj, upstream, now, self.upstream_timeout)
        if isinstance(decision, status.Gate):
            return decision, None
        self._creating += 1
        try:
            manifest = jobs.build_job(tj, decision, self.trainer_image)
            if tj.spec.resources.workers > 1:  # the workers' DNS names, before any of them starts
                await _call(self._create_pool, self.kube.ensure_service, jobs.build_service(tj), state.uid)
            created_job, created = await _call(self._create_pool, self.kube.ensure, manifest, state.uid)
        except ConflictError as error:
            return status.Gate(Phase.FAILED, "Failed", "JobConflict", str(error)), None
        except ApiException as error:
            if error.status in (400, 403, 422):
                message = f"the API server rejected the training Job: {error.reason}: {error.body}"
                return status.Gate(Phase.FAILED, "Failed", "JobRejected", message[:1000]), None
            raise
        finally:
            self._creating -= 1
            self._last_creation = time.monotonic()
        job = slim_job(created_job)
        state.created_job = job
        if created:
            metrics.JOBS_CREATED.inc()
            init = f" from the model of {source}" if source else ""
            suspended = " (suspended)" if job.get("spec", {}).get("suspend") else ""
            state.unposted.append(
                status.Transition(
                    "Normal", "JobCreated", f"created Job {job['metadata']['name']}{init}{suspended}"
                )
            )
            # What the SDK warns about at submission, for those who applied the spec with kubectl.
            state.unposted.extend(
                status.Transition("Warning", warning.reason, str(warning)) for warning in tj.spec.warnings()
            )
        return None, job

    async def _follow(self, key: Key, state: JobState, pods: list[Json]) -> None:
        """Follow the running pod's log; replay a finished pod's log the operator never followed.

        In a worker group only the chief's (index 0) pods are followed: every worker reports the same
        all-reduced epochs, and only the chief tests and exports.
        """
        for pod in pods:
            if pod["metadata"].get("labels", {}).get(COMPLETION_INDEX_LABEL, "0") != "0":
                continue
            pod_name = pod["metadata"]["name"]
            phase = pod.get("status", {}).get("phase")
            if phase not in ("Running", "Succeeded", "Failed"):
                continue
            if state.progress is None:
                state.progress = SharedProgress(on_change=functools.partial(self.wake, key))
            follower = state.followers.get(pod_name)
            if phase == "Running" and (follower is None or not follower.alive):
                if follower is not None:
                    follower.stop()
                    metrics.LOG_STREAM_RECONNECTS.inc()
                state.followers[pod_name] = LogFollower(
                    self.kube, key[0] or "", pod_name, state.progress
                ).start()
            elif phase in ("Succeeded", "Failed") and pod_name not in state.followers:
                await self._replay(key, state, pod_name)

    async def _replay(self, key: Key, state: JobState, pod_name: str) -> None:
        """Read a finished pod's whole log once: its epochs, when the operator was not watching."""
        if pod_name in state.replayed or state.progress is None:
            return
        state.replayed.add(pod_name)
        try:
            text = await _call(self._write_pool, self.kube.read_log, key[0] or "", pod_name)
        except ApiException:
            return
        for line in text.splitlines():
            state.progress.apply_line(line)

    async def _write(
        self,
        key: Key,
        state: JobState,
        body: Json,
        new: TransferJobStatus,
        previous: TransferJobStatus | None,
    ) -> bool:
        """Patch `.status` if it changed, with an Event per transition; False when deferred.

        The Events go out just before the patch, so that whoever sees the new status also finds its
        Events. A Job created suspended says so in `JobCreated`; no separate `Suspended` Event.
        """
        patch = status.status_patch(state.written, new)
        if patch is None and not state.unposted:
            state.deferred_since = None
            return True
        if new.phase in DEFERRABLE and self.bursting:
            started = state.deferred_since = state.deferred_since or time.monotonic()
            if time.monotonic() - started < MAX_DEFER:
                state.due = time.time() + BURST_QUIET
                return False
        state.deferred_since = None
        announced = state.announced if state.announced is not None else previous
        created_suspended = any(
            e.reason == "JobCreated" and e.message.endswith("(suspended)") for e in state.unposted
        )
        events = list(state.unposted)
        for event in status.transitions(announced, new):
            if created_suspended and event.type == "Normal" and event.reason in ("Suspended", "Queued"):
                continue
            events.append(event)
        state.unposted = []
        state.announced = new
        for event in events:
            await self._event(key, body, event)
        if patch is None:
            return True
        try:
            await _call(self._write_pool, self.kube.patch_status, key[0] or "", key[1], patch)
        except Exception as error:  # refused or lost in transit: counted, retried on the next step
            if isinstance(error, ApiException) and error.status == 404:
                self.forget(key)  # deleted meanwhile
                return True
            metrics.STATUS_PATCH_ERRORS.inc()
            raise
        metrics.STATUS_PATCHES.inc()
        state.written = new.to_dict()
        state.previous = None
        # Keep the store's status current too (gates of `fromJob` jobs read it before the echo).
        stored = self.store.get(key)
        if stored is not None:
            stored["status"] = slim_transferjob_status(state.written)
        if new.phase in TERMINAL_PHASES and not needs_supervision(stored or body):
            self.finished.add(state.uid)
            self._drop(key)  # finished for good: nothing to follow, nothing to expire
        return True

    async def _event(self, key: Key, body: Json, event: status.Transition) -> None:
        log_fn = log.warning if event.type == "Warning" else log.info
        log_fn("%s/%s: %s: %s", key[0], key[1], event.reason, event.message)
        try:
            await _call(
                self._write_pool,
                self.kube.post_event,
                body,
                event.type,
                event.reason,
                event.message,
                self.reporter,
            )
        except ApiException as error:  # an Event is worth a warning, not a retry of the whole step
            log.warning("%s/%s: could not post Event %s: %s", key[0], key[1], event.reason, error.reason)

    async def _expire(
        self,
        key: Key,
        state: JobState,
        body: Json,
        tj: TransferJob,
        previous: TransferJobStatus,
        now: dt.datetime,
    ) -> None:
        """Delete a finished TransferJob once its TTL has passed (the Job and pods go with it)."""
        ttl = tj.spec.run_policy.ttl_seconds_after_finished
        if ttl is None or previous.completion_time is None:
            self.finished.add(state.uid)
            self._drop(key)
            return
        expiry = previous.completion_time + dt.timedelta(seconds=ttl)
        if now >= expiry:
            await self._event(
                key, body, status.Transition("Normal", "Expired", f"deleting: finished more than {ttl}s ago")
            )
            await _call(self._write_pool, self.kube.delete_transferjob, key[0] or "", key[1], state.uid)
            state.due = time.time() + self.interval  # deleted: the DELETED event forgets it; else retried
        else:
            state.due = expiry.timestamp()
