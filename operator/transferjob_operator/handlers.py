"""The kopf glue: indexes of what exists, and one supervising daemon per TransferJob.

Why a daemon and not a set of create/update/event handlers: one TransferJob has exactly one writer of
its `.status`, so there are no races between handlers, and the daemon's loop is level-triggered: every
second it looks at the TransferJob, its Job and pods (from kopf's in-memory indexes, not API calls),
creates what is missing, and writes the status if it changed. Restarting the operator simply starts the
daemons again; nothing depends on having seen an event. The loop's period also coalesces status
writes: at most one patch per second per job, however fast the trainer prints.

Decisions are made by pure functions (`jobs`, `status`, `upstream`, `tracking`); API calls live in
`kube`; this module only wires them to kopf.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf
from kubernetes import client
from kubernetes.client.rest import ApiException

from transferjob.constants import GROUP, LABEL_JOB_NAME, PLURAL, VERSION
from transferjob.models import Phase, SpecError, TransferJob, TransferJobStatus, parse_spec
from transferjob_operator import jobs, metrics, status
from transferjob_operator.kube import ConflictError, Kube, LogFollower, owned_by
from transferjob_operator.tracking import SharedProgress
from transferjob_operator.upstream import DEFAULT_UPSTREAM_TIMEOUT, upstream_gate

Json = dict[str, Any]
Key = tuple[str | None, str]
IndexEntry = dict[Key, Json]
R = TypeVar("R")

#: The blocking client calls run in two thread pools: Job creation has its own, so that in a burst a
#: new TransferJob's Job does not queue behind hundreds of status patches; status patches, Job patches,
#: log reads and deletions share a smaller one. (kopf posts the Events itself, one at a time.)
_CREATE_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tj-create")
_WRITE_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tj-write")

#: A settled supervisor still takes a step this often, whatever it was told (a cheap check when
#: nothing changed): the level-triggered safety net under the event-driven wake-ups.
RESYNC_SECONDS = 60.0


#: Status patches of jobs that are only Pending or Suspended (nobody waits for their metrics) wait up to
#: this long while Job creations are in flight: in a burst the API server's capacity goes to Jobs first.
YIELD_SECONDS = 5.0


class _Creations:
    """Counts the Job creations in flight; `quiet` is set when there are none."""

    def __init__(self) -> None:
        self.count = 0
        self.quiet = asyncio.Event()
        self.quiet.set()

    @contextlib.asynccontextmanager
    async def creating(self) -> AsyncIterator[None]:
        self.count += 1
        self.quiet.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self.quiet.set()

    async def wait_quiet(self, timeout: float) -> None:
        if not self.quiet.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.quiet.wait(), timeout)


CREATIONS = _Creations()


async def _call(pool: ThreadPoolExecutor, fn: Callable[..., R], *args: Any) -> R:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))


@dataclass
class OperatorConfig:
    """What `__main__` decides before kopf starts: the API client and the timing knobs."""

    api: client.ApiClient | None = None
    interval: float = 1.0
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    peering_lifetime: int = 15


CONFIG = OperatorConfig()


def configure(config: OperatorConfig) -> None:
    """Set the module's configuration (the CLI calls this before `kopf.run`)."""
    global CONFIG
    CONFIG = config


def _kube() -> Kube:
    if CONFIG.api is None:
        CONFIG.api = client.ApiClient()
    return Kube(CONFIG.api)


def _plain(body: Any) -> Json:
    """A detached copy of a kopf body: indexes keep it after kopf moves on to the next event."""
    return copy.deepcopy(dict(body))


_META_FIELDS = (
    "name",
    "uid",
    "resourceVersion",
    "ownerReferences",
    "creationTimestamp",
    "deletionTimestamp",
)


def _slim_meta(body: Any) -> Json:
    meta = body.get("metadata", {})
    return {k: copy.deepcopy(meta[k]) for k in _META_FIELDS if k in meta}


def slim_job(body: Any) -> Json:
    """What the status logic reads of a Job: no pod template, no managedFields (~1/20 of the object)."""
    spec = body.get("spec", {})
    return {
        "metadata": _slim_meta(body),
        "spec": {k: spec[k] for k in ("suspend", "activeDeadlineSeconds") if k in spec},
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


def slim_pod(body: Any) -> Json:
    """What the status logic reads of a pod: phase, conditions, the containers' states and images."""
    status = body.get("status") or {}
    containers = body.get("spec", {}).get("containers") or []
    return {
        "metadata": _slim_meta(body),
        "spec": {"containers": [{"name": c.get("name"), "image": c.get("image")} for c in containers]},
        "status": {
            k: copy.deepcopy(status[k]) for k in ("phase", "conditions", "containerStatuses") if k in status
        },
    }


def _fingerprint(obj: Json | None) -> tuple[str | None, str | None]:
    meta = (obj or {}).get("metadata", {})
    return meta.get("uid"), meta.get("resourceVersion")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


# ------------------------------------------------------------------------------------------ kopf setup


class _QuietWakeUps(logging.Filter):
    """Drops kopf's "Handler 'job_changed' succeeded." lines: one per watch event, they say nothing."""

    HANDLERS = ("count_phases", "job_changed", "pod_changed")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (
            message.endswith("' succeeded.") and any(f"'{name}'" in message for name in self.HANDLERS)
        )


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Own names for kopf's marks on our objects, and no events from plain log lines."""
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.loggers = False
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _QuietWakeUps) for f in objects.filters):
        objects.addFilter(_QuietWakeUps())
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A replica that dies without saying goodbye (SIGKILL, node loss) counts as gone this long after
    # its last keep-alive; only then does a paused replica take over. kopf's default is 60 s.
    settings.peering.lifetime = CONFIG.peering_lifetime
    logger.info("transferjob operator starting: status every %.1fs", CONFIG.interval)


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches use exactly the credentials the CLI loaded (`--kubeconfig`, in-cluster, ...).

    kopf's own `login_via_client` reloads the default kubeconfig location, which ignores
    `--kubeconfig`; this reads the already loaded configuration instead (re-invoked on a 401, so a
    refreshed ServiceAccount token is picked up).
    """
    config = _kube().api.configuration
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    scheme, _sep, token = header.rpartition(" ") if header else ("", "", "")
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        trust_env=settings.networking.trust_env,
    )


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    if CONFIG.api is not None:
        CONFIG.api.close()


# ------------------------------------------------------------------------------------------- indexes


@kopf.index("batch", "v1", "jobs", labels={LABEL_JOB_NAME: kopf.PRESENT})
def training_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> IndexEntry:
    """Training Jobs by (namespace, TransferJob name), slimmed to what the status logic reads."""
    return {(namespace, labels[LABEL_JOB_NAME]): slim_job(body)}


@kopf.index("", "v1", "pods", labels={LABEL_JOB_NAME: kopf.PRESENT})
def training_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> IndexEntry:
    """Training pods by (namespace, TransferJob name), slimmed to what the status logic reads."""
    return {(namespace, labels[LABEL_JOB_NAME]): slim_pod(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def transferjobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> IndexEntry:
    """TransferJobs by (namespace, name): what a `fromJob` waits for (what `upstream_gate` reads)."""
    output = body.spec.get("output") or {}
    status = {k: body.status[k] for k in ("phase", "conditions", "model") if k in body.status}
    return {(namespace, name): {"spec": {"output": _plain(output)}, "status": _plain(status)}}


#: The live supervisors by (namespace, TransferJob name), for `wake`.
SUPERVISORS: dict[Key, Supervisor] = {}


def wake(key: Key) -> None:
    """Something a supervisor reads changed: let it take a step (at most one per `--interval`)."""
    supervisor = SUPERVISORS.get(key)
    if supervisor is not None:
        supervisor.wake.set()


@kopf.on.event(GROUP, VERSION, PLURAL)
def count_phases(
    event: kopf.RawEvent, namespace: str | None, name: str, status: kopf.Status, **_: Any
) -> None:
    """Keep the `transferjobs{phase}` gauge current (an index cannot see deletions, events can)."""
    if event.get("type") == "DELETED":
        metrics.PHASES.forget(namespace, name)
    else:
        metrics.PHASES.set(namespace, name, status.get("phase"))
    wake((namespace, name))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB_NAME: kopf.PRESENT})
def job_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """A training Job changed (its index entry is already updated): its TransferJob has a look."""
    wake((namespace, labels[LABEL_JOB_NAME]))


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB_NAME: kopf.PRESENT})
def pod_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """A training pod changed: its TransferJob has a look."""
    wake((namespace, labels[LABEL_JOB_NAME]))


# -------------------------------------------------------------------------------------------- daemon


def needs_supervision(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Unfinished jobs, and finished ones with a TTL to enforce; finished ones need nothing else."""
    finished = status.get("phase") in (Phase.SUCCEEDED.value, Phase.FAILED.value)
    return not finished or spec.get("runPolicy", {}).get("ttlSecondsAfterFinished") is not None


# The index kwargs (training_jobs, ...) are not part of kopf's DaemonFn protocol, hence the ignore.
@kopf.daemon(GROUP, VERSION, PLURAL, when=needs_supervision, cancellation_timeout=10.0)  # type: ignore[arg-type]
async def supervise(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    uid: str,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    training_jobs: kopf.Index[Key, Json],
    training_pods: kopf.Index[Key, Json],
    transferjobs: kopf.Index[Key, Json],
    **_: Any,
) -> None:
    """Drive one TransferJob until it is finished (and, with a TTL, deleted).

    A step runs when something it reads changed (a watch event on the TransferJob, its Job or pods, or
    a progress line from the log follower), at most once per `--interval`; a step whose inputs did not
    change since the last one does nothing. A supervisor with nothing to do costs no CPU.
    """
    key: Key = (namespace, name)
    supervisor = Supervisor(_kube(), namespace or "", name, uid, body, logger)
    SUPERVISORS[key] = supervisor
    try:
        while not stopped:
            started = time.monotonic()
            supervisor.wake.clear()
            try:
                stepped = await supervisor.step(training_jobs, training_pods, transferjobs)
            except ApiException as error:
                logger.warning("API error, retrying: %s %s", error.status, error.reason)
                supervisor.retry = True
                stepped = True
            if stepped:
                metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
            await stopped.wait(CONFIG.interval)  # coalesces: at most one step (and patch) per interval
            if not stopped:
                await supervisor.idle(stopped)
    finally:
        if SUPERVISORS.get(key) is supervisor:
            del SUPERVISORS[key]
        supervisor.close()


class Supervisor:
    """The state one daemon keeps between its loop's steps (all of it rebuildable after a restart)."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, uid: str, body: kopf.Body, logger: kopf.Logger
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.body = body
        self.logger = logger
        self.wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.progress = SharedProgress(on_change=self._wake_threadsafe)
        self.followers: dict[str, LogFollower] = {}
        self.replayed: set[str] = set()
        self.created_job: Json | None = None
        self.written: Json = _plain(body.get("status", {}))
        self._previous_model: tuple[TransferJobStatus | None] | None = None
        self._parsed: tuple[Any, TransferJob | SpecError] | None = None
        #: The status whose transitions were last announced as Events (None: the one last written).
        self._announced: TransferJobStatus | None = None
        #: What the last completed step read; the same inputs again make a step a no-op.
        self.inputs: tuple[Any, ...] | None = None
        #: When the last step's outcome expires by itself (fromJob waiting, TTL), whatever changes.
        self.due: float | None = None
        #: The last step failed (API error): try again after an interval.
        self.retry = False

    def close(self) -> None:
        for follower in self.followers.values():
            follower.stop()

    def _wake_threadsafe(self) -> None:
        """A log follower read progress or its stream ended: wake the loop from the follower's thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the operator is exiting
            self._loop.call_soon_threadsafe(self.wake.set)

    async def idle(self, stopped: kopf.DaemonStopped) -> None:
        """Wait until woken, stopped, or the last step's outcome is due for a recheck."""
        if self.retry or self.wake.is_set():
            return
        timeout = RESYNC_SECONDS
        if self.due is not None:
            timeout = min(timeout, max(0.0, self.due - time.time()))
        if timeout <= 0:
            return
        waker = asyncio.create_task(self.wake.wait())
        stopper = asyncio.ensure_future(stopped.wait(timeout))
        try:
            await asyncio.wait({waker, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            stopper.cancel()

    def _event(self, kind: str, reason: str, message: str) -> None:
        kopf.event(self.body, type=kind, reason=reason, message=message)
        log = self.logger.warning if kind == "Warning" else self.logger.info
        log("%s: %s", reason, message)

    def _previous(self) -> TransferJobStatus | None:
        """The status last written (or found at start), as a model; parsed once per write."""
        if self._previous_model is None:
            try:
                model = TransferJobStatus.model_validate(self.written) if self.written else None
            except ValueError:
                model = None
            self._previous_model = (model,)
        return self._previous_model[0]

    def _followed(self, pods: list[Json]) -> bool:
        """Whether every running pod's log has a live follower."""
        return all(
            pod["metadata"]["name"] in self.followers and self.followers[pod["metadata"]["name"]].alive
            for pod in pods
            if pod.get("status", {}).get("phase") == "Running"
        )

    async def step(
        self,
        job_index: kopf.Index[Key, Json],
        pod_index: kopf.Index[Key, Json],
        tj_index: kopf.Index[Key, Json],
    ) -> bool:
        """One reconcile; False when nothing it reads changed since the last one (nothing done)."""
        key: Key = (self.namespace, self.name)
        job = next((j for j in job_index.get(key, []) if owned_by(j, self.uid)), self.created_job)
        job_uid = (job or {}).get("metadata", {}).get("uid")
        pods = [p for p in pod_index.get(key, []) if job_uid and owned_by(p, job_uid)]
        inputs = (
            self.body.get("metadata", {}).get("resourceVersion"),
            _fingerprint(job),
            frozenset(_fingerprint(p) for p in pods),
            self.progress.version,
        )
        if (
            inputs == self.inputs
            and not self.retry
            and (self.due is None or time.time() < self.due)
            and self._followed(pods)
        ):
            return False
        self.retry = False
        self.due = None
        await self._reconcile(job, pods, tj_index)
        self.inputs = inputs
        return True

    def _parse(self) -> TransferJob | SpecError:
        """The stored TransferJob as models, parsed again only when its spec or labels changed.

        Its own status patches (most of its resourceVersions) change neither, so most steps reuse it.
        """
        meta = self.body.get("metadata", {})
        key = (meta.get("generation"), tuple(sorted((meta.get("labels") or {}).items())))
        if self._parsed is None or self._parsed[0] != key:
            raw = _plain({k: v for k, v in self.body.items() if k != "status"})
            try:
                parse_spec(raw.get("spec") or {})
                parsed: TransferJob | SpecError = TransferJob.from_dict({**raw, "status": None})
            except SpecError as error:
                parsed = error
            self._parsed = (key, parsed)
        return self._parsed[1]

    async def _reconcile(self, job: Json | None, pods: list[Json], tj_index: kopf.Index[Key, Json]) -> None:
        now = _now()
        previous = self._previous()
        parsed = self._parse()
        if isinstance(parsed, SpecError):
            generation = self.body.get("metadata", {}).get("generation")
            invalid = status.invalid_spec_status(previous, parsed.problems, generation, now)
            await self._write(invalid, previous)
            return
        tj = parsed.model_copy(update={"status": previous})

        finished = previous is not None and previous.phase in status.TERMINAL
        if finished:
            await self._expire(tj, previous, now)
            return

        gate: status.Gate | None = None
        created = False
        if job is None:
            gate, job = await self._create(tj, tj_index, now)
            created = job is not None
            if gate is not None:
                self.due = time.time()  # waiting for fromJob: look again every interval
        else:
            patch = jobs.job_spec_patch(tj, job)
            if patch is not None:
                await _call(_WRITE_POOL, self.kube.patch_job, self.namespace, job["metadata"]["name"], patch)
                self._event("Normal", "JobUpdated", f"Job {job['metadata']['name']}: {patch['spec']}")

        await self._follow(pods)
        new = status.status_from_job_and_pods(tj, job, pods, self.progress.snapshot(), now, gate)
        await self._write(new, previous, created)

    async def _create(
        self, tj: TransferJob, tj_index: kopf.Index[Key, Json], now: dt.datetime
    ) -> tuple[status.Gate | None, Json | None]:
        """Create the Job, unless `fromJob` holds the job back."""
        upstream = None
        source = tj.spec.model.from_job
        if source is not None:
            upstream = next(iter(tj_index.get((self.namespace, source), [])), None)
        decision = upstream_gate(tj, upstream, now, CONFIG.upstream_timeout)
        if isinstance(decision, status.Gate):
            return decision, None
        try:
            async with CREATIONS.creating():
                manifest = jobs.build_job(tj, decision)
                job, created = await _call(_CREATE_POOL, self.kube.ensure, manifest, self.uid)
        except ConflictError as error:
            return status.Gate(Phase.FAILED, "Failed", "JobConflict", str(error)), None
        except ApiException as error:
            if error.status in (400, 403, 422):
                message = f"the API server rejected the training Job: {error.reason}: {error.body}"
                return status.Gate(Phase.FAILED, "Failed", "JobRejected", message[:1000]), None
            raise
        job = slim_job(job)
        self.created_job = job
        if created:
            metrics.JOBS_CREATED.inc()
            init = f" from the model of {source}" if source else ""
            suspended = " (suspended)" if job.get("spec", {}).get("suspend") else ""
            self._event("Normal", "JobCreated", f"created Job {job['metadata']['name']}{init}{suspended}")
        return None, job

    async def _follow(self, pods: list[Json]) -> None:
        """Follow the running pod's log; replay a finished pod's log the operator never followed."""
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            phase = pod.get("status", {}).get("phase")
            follower = self.followers.get(pod_name)
            if phase == "Running" and (follower is None or not follower.alive):
                if follower is not None:
                    follower.stop()
                    metrics.LOG_STREAM_RECONNECTS.inc()
                self.followers[pod_name] = LogFollower(
                    self.kube, self.namespace, pod_name, self.progress
                ).start()
            elif phase in ("Succeeded", "Failed") and pod_name not in self.followers:
                await self._replay(pod_name)

    async def _replay(self, pod_name: str) -> None:
        """Read a finished pod's whole log once: its epochs, when the operator was not watching."""
        if pod_name in self.replayed:
            return
        self.replayed.add(pod_name)
        try:
            text = await _call(_WRITE_POOL, self.kube.read_log, self.namespace, pod_name)
        except ApiException:
            return
        for line in text.splitlines():
            self.progress.apply_line(line)

    async def _write(
        self, new: TransferJobStatus, previous: TransferJobStatus | None, created: bool = False
    ) -> None:
        """Patch `.status` if it changed, and post an Event per transition (just before the patch).

        In the step that created the Job, a Job that starts suspended is said by `JobCreated` itself;
        no separate `Suspended` Event (one API write less per TransferJob in a burst).
        """
        patch = status.status_patch(self.written, new)
        if patch is None:
            return
        if new.phase in (Phase.PENDING, Phase.SUSPENDED):
            await CREATIONS.wait_quiet(YIELD_SECONDS)
        # Events first (kopf posts them from its queue as the patch goes out), so that whoever sees the
        # new status also finds its Events; `announced` keeps a retried patch from repeating them.
        announced = self._announced if self._announced is not None else previous
        for event in status.transitions(announced, new):
            if created and event.type == "Normal" and event.reason in ("Suspended", "Queued"):
                continue
            self._event(event.type, event.reason, event.message)
        self._announced = new
        try:
            await _call(_WRITE_POOL, self.kube.patch_status, self.namespace, self.name, patch)
        except Exception as error:  # refused or lost in transit: counted, retried on the next step
            if isinstance(error, ApiException) and error.status == 404:
                return  # deleted meanwhile; kopf stops this daemon
            metrics.STATUS_PATCH_ERRORS.inc()
            raise
        metrics.STATUS_PATCHES.inc()
        self.written = new.to_dict()
        self._previous_model = None

    async def _expire(self, tj: TransferJob, previous: TransferJobStatus, now: dt.datetime) -> None:
        """Delete a finished TransferJob once its TTL has passed (the Job and pods go with it)."""
        ttl = tj.spec.run_policy.ttl_seconds_after_finished
        if ttl is None or previous.completion_time is None:
            return
        expiry = previous.completion_time + dt.timedelta(seconds=ttl)
        if now >= expiry:
            self._event("Normal", "Expired", f"deleting: finished more than {ttl}s ago")
            await _call(_WRITE_POOL, self.kube.delete_transferjob, self.namespace, self.name, self.uid)
            self.due = time.time() + CONFIG.interval  # deleted: kopf stops the daemon; else retried
        else:
            self.due = expiry.timestamp()
