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
import copy
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


# ------------------------------------------------------------------------------------------ kopf setup


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Own names for kopf's marks on our objects, and no events from plain log lines."""
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.loggers = False
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
    """Training Jobs by (namespace, TransferJob name)."""
    return {(namespace, labels[LABEL_JOB_NAME]): _plain(body)}


@kopf.index("", "v1", "pods", labels={LABEL_JOB_NAME: kopf.PRESENT})
def training_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> IndexEntry:
    """Training pods by (namespace, TransferJob name)."""
    return {(namespace, labels[LABEL_JOB_NAME]): _plain(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def transferjobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> IndexEntry:
    """TransferJobs by (namespace, name): what a `fromJob` waits for."""
    return {(namespace, name): {"spec": _plain(body.spec), "status": _plain(body.status)}}


@kopf.on.event(GROUP, VERSION, PLURAL)
def count_phases(
    event: kopf.RawEvent, namespace: str | None, name: str, status: kopf.Status, **_: Any
) -> None:
    """Keep the `transferjobs{phase}` gauge current (an index cannot see deletions, events can)."""
    if event.get("type") == "DELETED":
        metrics.PHASES.forget(namespace, name)
    else:
        metrics.PHASES.set(namespace, name, status.get("phase"))


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
    """Drive one TransferJob until it is finished (and, with a TTL, deleted)."""
    supervisor = Supervisor(_kube(), namespace or "", name, uid, body, logger)
    try:
        while not stopped:
            started = time.monotonic()
            try:
                await supervisor.step(training_jobs, training_pods, transferjobs)
            except ApiException as error:
                logger.warning("API error, retrying: %s %s", error.status, error.reason)
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
            await stopped.wait(CONFIG.interval)
    finally:
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
        self.progress = SharedProgress()
        self.followers: dict[str, LogFollower] = {}
        self.replayed: set[str] = set()
        self.created_job: Json | None = None
        self.written: Json = _plain(body.get("status", {}))

    def close(self) -> None:
        for follower in self.followers.values():
            follower.stop()

    def _event(self, kind: str, reason: str, message: str) -> None:
        kopf.event(self.body, type=kind, reason=reason, message=message)
        log = self.logger.warning if kind == "Warning" else self.logger.info
        log("%s: %s", reason, message)

    def _previous(self) -> TransferJobStatus | None:
        try:
            return TransferJobStatus.model_validate(self.written) if self.written else None
        except ValueError:
            return None

    async def step(
        self,
        job_index: kopf.Index[Key, Json],
        pod_index: kopf.Index[Key, Json],
        tj_index: kopf.Index[Key, Json],
    ) -> None:
        raw = _plain(self.body)
        now = _now()
        previous = self._previous()
        try:
            parse_spec(raw.get("spec") or {})
            tj = TransferJob.from_dict({**raw, "status": None}).model_copy(update={"status": previous})
        except SpecError as error:
            generation = raw.get("metadata", {}).get("generation")
            await self._write(status.invalid_spec_status(previous, error.problems, generation, now), previous)
            return

        key: Key = (self.namespace, self.name)
        job = next((j for j in job_index.get(key, []) if owned_by(j, self.uid)), self.created_job)
        finished = previous is not None and previous.phase in status.TERMINAL
        if finished:
            await self._expire(tj, previous, now)
            return

        gate: status.Gate | None = None
        if job is None:
            gate, job = await self._create(tj, tj_index, now)
        else:
            patch = jobs.job_spec_patch(tj, job)
            if patch is not None:
                await asyncio.to_thread(self.kube.patch_job, self.namespace, job["metadata"]["name"], patch)
                self._event("Normal", "JobUpdated", f"Job {job['metadata']['name']}: {patch['spec']}")

        job_uid = (job or {}).get("metadata", {}).get("uid")
        pods = [p for p in pod_index.get(key, []) if job_uid and owned_by(p, job_uid)]
        await self._follow(pods)
        new = status.status_from_job_and_pods(tj, job, pods, self.progress.snapshot(), now, gate)
        await self._write(new, previous)

    async def _create(
        self, tj: TransferJob, tj_index: kopf.Index[Key, Json], now: dt.datetime
    ) -> tuple[status.Gate | None, Json | None]:
        """Create the ConfigMap and the Job, unless `fromJob` holds the job back."""
        upstream = None
        source = tj.spec.model.from_job
        if source is not None:
            upstream = next(iter(tj_index.get((self.namespace, source), [])), None)
        decision = upstream_gate(tj, upstream, now, CONFIG.upstream_timeout)
        if isinstance(decision, status.Gate):
            return decision, None
        try:
            await asyncio.to_thread(self.kube.ensure, jobs.build_config_map(tj), self.uid)
            job, created = await asyncio.to_thread(self.kube.ensure, jobs.build_job(tj, decision), self.uid)
        except ConflictError as error:
            return status.Gate(Phase.FAILED, "Failed", "JobConflict", str(error)), None
        except ApiException as error:
            if error.status in (400, 403, 422):
                message = f"the API server rejected the training Job: {error.reason}: {error.body}"
                return status.Gate(Phase.FAILED, "Failed", "JobRejected", message[:1000]), None
            raise
        self.created_job = job
        if created:
            metrics.JOBS_CREATED.inc()
            init = f" from the model of {source}" if source else ""
            self._event("Normal", "JobCreated", f"created Job {job['metadata']['name']}{init}")
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
            text = await asyncio.to_thread(self.kube.read_log, self.namespace, pod_name)
        except ApiException:
            return
        for line in text.splitlines():
            self.progress.apply_line(line)

    async def _write(self, new: TransferJobStatus, previous: TransferJobStatus | None) -> None:
        patch = status.status_patch(self.written, new)
        if patch is None:
            return
        try:
            await asyncio.to_thread(self.kube.patch_status, self.namespace, self.name, patch)
        except Exception as error:  # refused or lost in transit: counted, retried on the next step
            if isinstance(error, ApiException) and error.status == 404:
                return  # deleted meanwhile; kopf stops this daemon
            metrics.STATUS_PATCH_ERRORS.inc()
            raise
        metrics.STATUS_PATCHES.inc()
        self.written = new.to_dict()
        for event in status.transitions(previous, new):
            self._event(event.type, event.reason, event.message)

    async def _expire(self, tj: TransferJob, previous: TransferJobStatus, now: dt.datetime) -> None:
        """Delete a finished TransferJob once its TTL has passed (the Job and pods go with it)."""
        ttl = tj.spec.run_policy.ttl_seconds_after_finished
        if ttl is None or previous.completion_time is None:
            return
        if now >= previous.completion_time + dt.timedelta(seconds=ttl):
            self._event("Normal", "Expired", f"deleting: finished more than {ttl}s ago")
            await asyncio.to_thread(self.kube.delete_transferjob, self.namespace, self.name, self.uid)
