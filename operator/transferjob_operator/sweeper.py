"""The TransferSweep controller: `transferjob.sweeping.plan_sweep` on a work queue, and its writes.

The decisions are the SDK's pure `plan_sweep` (a local sweep takes the same steps); this module keeps
the slim copies of sweeps and of their trial TransferJobs that kopf's watches hand it, steps a sweep
when it or one of its trials changes, and makes the calls a plan asks for, in the order that keeps a
restart safe:

1. `.status` first, as a merge patch carrying the sweep's `resourceVersion`: a step that read a stale
   sweep (the watch lags behind our own writes) gets a 409 and is retried once the watch has caught
   up, so two steps never record two different trial n;
2. then the Events of that status;
3. then the trials: delete the stopped ones (uid precondition), suspend or resume, create the missing
   ones with an owner reference to the sweep (controller, blockOwnerDeletion), so that deleting the
   sweep deletes its trials by garbage collection. A 409 on create adopts the trial when it is the
   sweep's (created before a restart); else, as when the API server refuses it, the next step
   records the trial as failed.

Like the TransferJob reconciler, it keeps nothing that the cluster does not hold: after a restart or a
peering hand-over kopf lists everything again and the steps continue from `.status`.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubernetes.client.rest import ApiException

from transferjob.constants import API_VERSION, LABEL_SWEEP, SWEEP_KIND
from transferjob.errors import SpecError
from transferjob.models import TransferJob
from transferjob.sweeping import SweepPlan, plan_sweep
from transferjob.sweeps import TransferSweep
from transferjob.types import Json
from transferjob_operator.kube import Kube, owned_by
from transferjob_operator.workqueue import WorkQueue

Key = tuple[str | None, str]
R = TypeVar("R")

log = logging.getLogger("transferjob_operator.sweeps")

#: An unfinished sweep is stepped at least this often (the level-triggered safety net).
RESYNC_SECONDS = 60.0
#: A step that failed (API error, a stale read refused with 409) is retried after this long.
RETRY_SECONDS = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def owner_reference(sweep: Json) -> Json:
    """The trial's owner reference: the sweep is its controller, and its deletion waits for the trials'."""
    meta = sweep["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": SWEEP_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class SweepController:
    """The sweeps and their trials as the watches report them, and one step per sweep on a queue."""

    def __init__(self, kube: Kube, interval: float = 1.0, reporter: str = "transferjob-operator") -> None:
        self.kube = kube
        self.reporter = reporter
        #: Sweeps by key, as last listed, watched or written.
        self.sweeps: dict[Key, Json] = {}
        #: Trial TransferJobs by sweep key, then by name.
        self.trials: dict[Key, dict[str, Json]] = {}
        #: Trials whose TransferJob could not be created, by sweep key, then name: why.
        self.refused: dict[Key, dict[str, str]] = {}
        self.queue: WorkQueue[Key] = WorkQueue(self._process, interval, workers=4, name="tj-sweeper")
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tj-sweep")

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()
        self.pause()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def pause(self) -> None:
        """Another replica acts: drop everything (kopf's fresh listing rebuilds it on resume)."""
        self.queue.pause()
        self.sweeps.clear()
        self.trials.clear()
        self.refused.clear()

    def resume(self) -> None:
        self.queue.resume()

    # ------------------------------------------------------------------------------------ the store

    def observe_sweep(self, body: Mapping[str, Any]) -> None:
        """A sweep was listed, added or modified: keep it and step it."""
        if self.queue.hand_over(self.observe_sweep, body) or not self.queue.active:
            return
        meta = body["metadata"]
        key: Key = (meta.get("namespace"), meta["name"])
        old = self.sweeps.get(key)
        if old is not None and old["metadata"].get("uid") != meta.get("uid"):
            self.refused.pop(key, None)
        self.sweeps[key] = _plain(body)
        self.queue.wake(key)

    def forget_sweep(self, key: Key) -> None:
        """A sweep was deleted: its trials go by garbage collection."""
        if self.queue.hand_over(self.forget_sweep, key):
            return
        self.sweeps.pop(key, None)
        self.refused.pop(key, None)
        self.queue.forget(key)

    def observe_trial(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A trial TransferJob (labelled with its sweep) changed: keep it and step its sweep."""
        if self.queue.hand_over(self.observe_trial, body, deleted) or not self.queue.active:
            return
        meta = body["metadata"]
        key: Key = (meta.get("namespace"), (meta.get("labels") or {}).get(LABEL_SWEEP, ""))
        if deleted:
            trials = self.trials.get(key, {})
            trials.pop(meta["name"], None)
            if not trials:
                self.trials.pop(key, None)
        else:
            self.trials.setdefault(key, {})[meta["name"]] = _plain(body)
        if key in self.sweeps:
            self.queue.wake(key)

    # ------------------------------------------------------------------------------------- the step

    async def _process(self, key: Key) -> None:
        body = self.sweeps.get(key)
        if body is None:
            return
        try:
            finished = await self.step(key, body)
        except Exception as error:
            if isinstance(error, ApiException):
                log.warning("%s/%s: API error, retrying: %s %s", *key, error.status, error.reason)
            else:
                log.exception("%s/%s: sweep step failed, retrying", *key)
            self.queue.wake_in(key, RETRY_SECONDS)
            return
        if not finished:
            self.queue.wake_in(key, RESYNC_SECONDS)

    async def step(self, key: Key, body: Json) -> bool:
        """One plan and its writes; True when the sweep has finished (nothing more to do)."""
        try:
            sweep = TransferSweep.from_dict(body)
        except SpecError as error:  # admission checks the same models: only an older CRD lets this in
            log.warning("%s/%s: invalid TransferSweep, not run: %s", *key, "; ".join(error.problems))
            return True
        uid = body["metadata"]["uid"]
        children = {
            name: TransferJob.from_dict(child)
            for name, child in self.trials.get(key, {}).items()
            if owned_by(child, uid)
        }
        plan = plan_sweep(sweep, children, _now(), self.refused.get(key))
        before = body.get("status") or {}
        wanted = plan.status.to_dict()
        if wanted != before:
            patch = {**{k: None for k in before if k not in wanted}, **wanted}
            resource_version = body["metadata"]["resourceVersion"]
            stored = await self._call(
                self.kube.patch_sweep_status, key[0] or "", key[1], patch, resource_version
            )
            if self.sweeps.get(key) is body:
                self.sweeps[key] = stored
        for event in plan.events:
            await self._event(body, event.type, event.reason, event.message)
        await self._act(key, body, plan)
        return plan.finished

    async def _act(self, key: Key, body: Json, plan: SweepPlan) -> None:
        namespace = key[0] or ""
        trials = self.trials.get(key, {})
        for name in plan.delete:
            child = trials.get(name)
            if child is not None:
                await self._call(self.kube.delete_transferjob, namespace, name, child["metadata"]["uid"])
        for name, suspend in plan.suspend.items():
            patch = {"spec": {"runPolicy": {"suspend": suspend}}}
            await self._call(self.kube.patch_transferjob, namespace, name, patch)
            verb = "suspended" if suspend else "resumed"
            await self._event(
                body, "Normal", "TrialSuspended" if suspend else "TrialResumed", f"{name} {verb}"
            )
        owner = owner_reference(body)
        for job in plan.create:
            manifest = job.to_dict()
            manifest["metadata"]["ownerReferences"] = [owner]
            name = manifest["metadata"]["name"]
            try:
                created, is_new = await self._call(self.kube.ensure_transferjob, manifest)
            except ApiException as error:
                if error.status not in (400, 403, 409, 422):
                    raise
                why = f"the API server refused TransferJob {name}: {error.reason}: {error.body}"
                self.refused.setdefault(key, {})[name] = why[:1000]
                self.queue.wake(key)
                continue
            if not owned_by(created, owner["uid"]):
                why = f"TransferJob {name} exists and is not this sweep's trial"
                self.refused.setdefault(key, {})[name] = why
                self.queue.wake(key)
            elif is_new:
                trials[name] = created
                self.trials[key] = trials
                await self._event(body, "Normal", "TrialCreated", f"created trial {name}")

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def _event(self, body: Json, kind: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        (log.warning if kind == "Warning" else log.info)(
            "%s/%s: %s: %s", meta.get("namespace"), meta["name"], reason, message
        )
        try:
            await self._call(self.kube.post_event, body, kind, reason, message, self.reporter)
        except ApiException as error:  # an Event is worth a warning, not a retry of the whole step
            log.warning(
                "%s/%s: could not post Event %s: %s",
                meta.get("namespace"),
                meta["name"],
                reason,
                error.reason,
            )


def _plain(body: Mapping[str, Any]) -> Json:
    """A plain-dict copy of a kopf body (kopf's bodies are views of its own, changing copy)."""
    return copy.deepcopy(dict(body))
