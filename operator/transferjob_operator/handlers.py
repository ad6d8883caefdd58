"""The kopf glue: watches feed the reconciler and the sweep controller; kopf's indexes hold the training
Jobs and pods.

TransferSweeps and their trials (TransferJobs labelled `transferjob.io/sweep`) feed the
`sweeper.SweepController` the same way: slim copies and wake-ups, the work on its own queue.
`--controllers` chooses which of the two controllers a process runs.

kopf watches TransferJobs, Jobs and pods, keeps slim indexes of the Jobs and pods (and makes every
handler wait until those are filled, so a restarted operator never takes a Job for missing), handles
peering between replicas, and logs in. It runs no per-object daemon and puts no finalizer on
TransferJobs: each watch event is one cheap call that updates the reconciler's store and wakes the
job's key; the work happens in `reconciler.Reconciler`. While peering pauses this replica (another one
acts), the reconciler is paused with it: it stops following logs and forgets its state, which kopf's
fresh listing rebuilds when this replica acts again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client

from transferjob.constants import (
    DEFAULT_TRAINER_IMAGE,
    GROUP,
    LABEL_JOB_NAME,
    LABEL_SWEEP,
    PLURAL,
    SWEEP_PLURAL,
    VERSION,
)
from transferjob.types import Json
from transferjob_operator import metrics
from transferjob_operator.kube import Kube
from transferjob_operator.reconciler import Reconciler
from transferjob_operator.slim import slim_job, slim_pod
from transferjob_operator.sweeper import SweepController
from transferjob_operator.upstream import DEFAULT_UPSTREAM_TIMEOUT

Key = tuple[str | None, str]
IndexEntry = dict[Key, Json]

__all__ = ["CONTROLLERS", "OperatorConfig", "configure", "slim_job", "slim_pod"]

#: The controllers one operator process can run (`tj-operator --controllers`).
CONTROLLERS = ("transferjobs", "transfersweeps")


@dataclass
class OperatorConfig:
    """What `__main__` decides before kopf starts: the API client and the timing knobs."""

    api: client.ApiClient | None = None
    interval: float = 1.0
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    peering_lifetime: int = 15
    workers: int = 32
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    #: Which of `CONTROLLERS` run; the watches of the others stay, their handlers do nothing.
    controllers: frozenset[str] = frozenset(CONTROLLERS)


CONFIG = OperatorConfig()
RECONCILER: Reconciler | None = None
SWEEPER: SweepController | None = None


def configure(config: OperatorConfig) -> None:
    """Set the module's configuration (the CLI calls this before `kopf.run`)."""
    global CONFIG
    CONFIG = config


def _kube() -> Kube:
    if CONFIG.api is None:
        CONFIG.api = client.ApiClient()
    return Kube(CONFIG.api)


# ------------------------------------------------------------------------------------------ kopf setup


class _QuietWakeUps(logging.Filter):
    """Drops kopf's "Handler 'job_changed' succeeded." lines: one per watch event, they say nothing."""

    HANDLERS = ("transferjob_event", "job_changed", "pod_changed", "transfersweep_event", "trial_event")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (
            message.endswith("' succeeded.") and any(f"'{name}'" in message for name in self.HANDLERS)
        )


class _NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled configuration": kopf computes one for every watch event (a deep copy of the
    object) for its on.create/on.update handlers, and this operator has none. An empty essence makes
    every event "no change" for those (absent) handlers; 10 % of the operator's CPU in a burst."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """kopf's settings, and the reconciler's workers on kopf's loop.

    The finalizer name stays set although no handler needs a finalizer any more: kopf then removes
    the finalizer that operators before 0.2 put on TransferJobs, instead of leaving it behind.
    """
    global RECONCILER, SWEEPER
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.loggers = False
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _QuietWakeUps) for f in objects.filters):
        objects.addFilter(_QuietWakeUps())
    # kopf keeps a worker task (with its queue) per object for this long after the object's last event;
    # after a burst that is one per TransferJob and per Job at once. Our handlers return at once, so
    # a short idle time costs nothing and keeps the burst's peak memory down.
    settings.queueing.idle_timeout = 1.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A replica that dies without saying goodbye (SIGKILL, node loss) counts as gone this long after
    # its last keep-alive; only then does a paused replica take over. kopf's default is 60 s.
    settings.peering.lifetime = CONFIG.peering_lifetime
    if "transferjobs" in CONFIG.controllers:
        RECONCILER = Reconciler(
            _kube(),
            CONFIG.interval,
            CONFIG.upstream_timeout,
            CONFIG.workers,
            trainer_image=CONFIG.trainer_image,
        )
        RECONCILER.start()
    if "transfersweeps" in CONFIG.controllers:
        SWEEPER = SweepController(_kube(), CONFIG.interval)
        SWEEPER.start()
    PAUSE.follow([c for c in (RECONCILER, SWEEPER) if c is not None])
    logger.info(
        "transferjob operator starting: %s, status every %.1fs",
        ", ".join(sorted(CONFIG.controllers)),
        CONFIG.interval,
    )


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
async def cleanup(**_: Any) -> None:
    PAUSE.unfollow()
    if RECONCILER is not None:
        await RECONCILER.stop()
    if SWEEPER is not None:
        await SWEEPER.stop()
    if CONFIG.api is not None:
        CONFIG.api.close()


# ------------------------------------------------------------------------------------------- indexes


@kopf.index("batch", "v1", "jobs", labels={LABEL_JOB_NAME: kopf.PRESENT})
async def training_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> IndexEntry:
    """Training Jobs by (namespace, TransferJob name), slimmed to what the status logic reads."""
    return {(namespace, labels[LABEL_JOB_NAME]): slim_job(body)}


@kopf.index("", "v1", "pods", labels={LABEL_JOB_NAME: kopf.PRESENT})
async def training_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> IndexEntry:
    """Training pods by (namespace, TransferJob name), slimmed to what the status logic reads."""
    return {(namespace, labels[LABEL_JOB_NAME]): slim_pod(body)}


# -------------------------------------------------------------------------------------- watch events
# All handlers are `async def` on purpose: kopf runs plain functions in a thread pool, and these touch
# the reconciler's asyncio queue and timers, which only the event loop's thread may do (and a thread
# hop per watch event is pure overhead for handlers that return in microseconds).


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]  # index kwargs are not in WatchingFn
async def transferjob_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    status: kopf.Status,
    training_jobs: kopf.Index[Key, Json],
    training_pods: kopf.Index[Key, Json],
    **_: Any,
) -> None:
    """A TransferJob was listed, changed or deleted: update the store and the phase gauge, wake it.

    kopf calls event handlers only once its indexes are filled, so from the first call on the
    reconciler may read them (they are the same objects for the operator's lifetime).
    """
    if RECONCILER is None:
        return
    RECONCILER.job_index = training_jobs
    RECONCILER.pod_index = training_pods
    if event.get("type") == "DELETED":
        metrics.PHASES.forget(namespace, name)
        RECONCILER.forget((namespace, name))
    else:
        metrics.PHASES.set(namespace, name, status.get("phase"))
        RECONCILER.observe(body)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB_NAME: kopf.PRESENT})
async def job_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """A training Job changed (its index entry is already updated): its TransferJob has a look."""
    if RECONCILER is not None:
        RECONCILER.wake((namespace, labels[LABEL_JOB_NAME]))


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB_NAME: kopf.PRESENT})
async def pod_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """A training pod changed: its TransferJob has a look."""
    if RECONCILER is not None:
        RECONCILER.wake((namespace, labels[LABEL_JOB_NAME]))


@kopf.on.event(GROUP, VERSION, SWEEP_PLURAL)
async def transfersweep_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    """A TransferSweep was listed, changed or deleted: the sweep controller steps it."""
    if SWEEPER is None:
        return
    if event.get("type") == "DELETED":
        SWEEPER.forget_sweep((namespace, name))
    else:
        SWEEPER.observe_sweep(body)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={LABEL_SWEEP: kopf.PRESENT})
async def trial_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """A sweep's trial TransferJob changed: its sweep has a look (it reads the trial's `.status`)."""
    if SWEEPER is not None:
        SWEEPER.observe_trial(body, deleted=event.get("type") == "DELETED")


# ---------------------------------------------------------------------------------------------- pause


class _Pause:
    """Pauses the reconciler exactly when kopf pauses this replica (peering: another one acts).

    kopf pauses by closing its watch streams, which stops the event handlers, and stops its daemons;
    it has no public signal for work that runs outside handlers (our workers, timers and log
    followers). Its orchestrator receives the toggle set that decides the pause (`operator_paused`),
    so `install` wraps that one function to see the same toggle set; kopf is pinned to a minor version
    (pyproject) and `tests/operator/test_reconciler.py` checks that the hook still takes. Standalone, the
    set is empty (never paused).
    """

    def __init__(self) -> None:
        self.toggles: Any = None
        self.original: Callable[..., Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        from kopf._core.reactor import orchestration

        original: Callable[..., Awaitable[None]] = orchestration.orchestrator
        if getattr(original, "_transferjob_pause", False):
            return
        self.original = original

        def orchestrator(*args: Any, operator_paused: Any, **kwargs: Any) -> Awaitable[None]:
            # Called (not awaited) when kopf spawns its tasks, before the startup handlers run.
            self.toggles = operator_paused
            return original(*args, operator_paused=operator_paused, **kwargs)

        orchestrator._transferjob_pause = True  # type: ignore[attr-defined]
        orchestration.orchestrator = orchestrator  # type: ignore[assignment]

    def follow(self, controllers: list[Reconciler | SweepController]) -> None:
        """Mirror kopf's pause onto the controllers, from now on (kopf's loop)."""
        if self.toggles is None:
            logging.getLogger("transferjob_operator").warning(
                "kopf's pause is not visible (hook not installed): the reconciler never pauses"
            )
            return
        self._task = asyncio.create_task(self._mirror(controllers), name="tj-pause-mirror")

    async def _mirror(self, controllers: list[Reconciler | SweepController]) -> None:
        log = logging.getLogger("transferjob_operator")
        # "acting: resuming the reconciler" is what the HA tests wait for in the log.
        names = " and the ".join(
            "reconciler" if isinstance(c, Reconciler) else "sweep controller" for c in controllers
        )
        while True:
            await self.toggles.wait_for(True)
            log.info("paused by peering (another replica acts, or peering is not settled yet)")
            for controller in controllers:
                controller.pause()
            await self.toggles.wait_for(False)
            log.info("acting: resuming the %s", names)
            for controller in controllers:
                controller.resume()

    def unfollow(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


PAUSE = _Pause()
PAUSE.install()


def _serve_listed_namespaces() -> None:
    """Serve a namespace that kopf first sees in a (re)listing, not only in a watch event.

    With namespace patterns (`--namespace 'team-*'`), kopf lists the namespaces once, then starts a
    watch stream, which lists them again and delivers that listing as events of type None; its
    observer drops those (`process_discovered_namespace_event`), as it does for CRDs, where the first
    scan already covered them. For namespaces nothing covers them: one created between the two listings
    (in the moment the operator starts), or while the stream reconnects (after an API server
    restart, a 410 Gone), is never served until the operator restarts, and its TransferJobs wait
    forever. Applying the listing too is safe: adding a matching namespace is idempotent. kopf is
    pinned to a minor version (pyproject) and `tests/operator/test_reconciler.py` checks that the
    hook still takes.
    """
    from kopf._core.reactor import observation

    original: Callable[..., Awaitable[None]] = observation.process_discovered_namespace_event
    if getattr(original, "_transferjob_listing", False):
        return

    async def process(*, raw_event: Any, **kwargs: Any) -> None:
        # A listed namespace exists: to kopf's own function it is an ADDED event.
        if raw_event.get("type") is None:
            raw_event = {**raw_event, "type": "ADDED"}
        await original(raw_event=raw_event, **kwargs)

    process._transferjob_listing = True  # type: ignore[attr-defined]
    observation.process_discovered_namespace_event = process


_serve_listed_namespaces()
