"""The operator's side effects on the API server, kept apart from the decisions (`jobs`, `status`).

Blocking `kubernetes` client calls: the kopf glue runs them in threads. Responses are read as plain
JSON dicts (`_preload_content=False`), the same shape kopf hands to handlers, so the pure functions see
one kind of object whatever its source.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from transferjob.constants import GROUP, PLURAL, SWEEP_PLURAL, VERSION
from transferjob.errors import TransferJobError
from transferjob.types import Json
from transferjob_operator.jobs import CONTAINER
from transferjob_operator.tracking import SharedProgress

MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "transferjob-operator"

#: Events longer than this are cut (the API server refuses messages over 1 KiB in events.k8s.io/v1).
MAX_EVENT_MESSAGE = 1024
INSTANCE = socket.gethostname()

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class ConflictError(TransferJobError):
    """An object with the name the operator needs exists and belongs to someone else."""


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Connection failures (API server restarting, network blip) as `ApiException(status=0)`.

    The generated client raises urllib3's errors for those, which callers that handle `ApiException`
    (the daemon loop: log and retry next period) would otherwise let escape, and kopf then restarts
    the daemon only after its 60 s backoff.
    """
    try:
        yield
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise ApiException(status=0, reason=f"API server unreachable: {error}") from error


def _api_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Run a `Kube` method under `_reachable`."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _reachable():
            return method(*args, **kwargs)

    return wrapper


def _drain(response: Any) -> bytes:
    """Read a raw (`_preload_content=False`) response whole and give its connection back to the pool.

    Without this, a response nobody reads keeps its connection, and the next call opens a new one:
    in a burst most of the operator's time went into TLS handshakes.
    """
    try:
        return bytes(response.data)
    finally:
        response.release_conn()


def _json(response: Any) -> Json:
    return dict(json.loads(_drain(response)))


def owned_by(obj: Json, uid: str) -> bool:
    """Whether the TransferJob with this uid is the object's controller."""
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


class Kube:
    """Thin typed wrappers over the calls the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        # Typed as Any: the generated client wants its model classes, the operator passes plain dicts
        # (which it validates into those models) and reads raw responses (`_preload_content=False`).
        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)

    @_api_errors
    def ensure(self, body: Json, owner_uid: str) -> tuple[Json, bool]:
        """Create the training Job unless it exists; return it and whether this call created it.

        A 409 means a previous reconcile (or a previous operator process) already created it: that one
        is adopted if it belongs to this TransferJob, never replaced, and reported as a Conflict if not.
        """
        ns = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        try:
            created = self.batch.create_namespaced_job(
                ns, body, field_manager=FIELD_MANAGER, _preload_content=False
            )
            return _json(created), True
        except ApiException as error:
            if error.status != 409:
                raise
        existing = _json(self.batch.read_namespaced_job(name, ns, _preload_content=False))
        if not owned_by(existing, owner_uid):
            raise ConflictError(f"Job {name} already exists and is not owned by this TransferJob")
        return existing, False

    @_api_errors
    def ensure_service(self, body: Json, owner_uid: str) -> None:
        """Create a worker group's headless Service unless it exists (a 409 adopts ours, refuses others)."""
        ns = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        try:
            self.core.create_namespaced_service(ns, body, field_manager=FIELD_MANAGER, _preload_content=False)
            return
        except ApiException as error:
            if error.status != 409:
                raise
        existing = _json(self.core.read_namespaced_service(name, ns, _preload_content=False))
        if not owned_by(existing, owner_uid):
            raise ConflictError(f"Service {name} already exists and is not owned by this TransferJob")

    @_api_errors
    def patch_job(self, namespace: str, name: str, patch: Json) -> None:
        self.batch.patch_namespaced_job(
            name, namespace, patch, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH
        )

    @_api_errors
    def patch_status(self, namespace: str, name: str, patch: Json) -> None:
        """Write `.status` through the status subresource (a merge patch: lists are replaced whole)."""
        response = self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": patch},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )
        _drain(response)

    @_api_errors
    def patch_sweep_status(self, namespace: str, name: str, patch: Json, resource_version: str) -> Json:
        """Merge-patch a TransferSweep's `.status` if the sweep is still at `resource_version` (else 409).

        The precondition is what lets a sweep step trust what it read: a step that planned from a stale
        copy must not record its trials over newer ones. Returns the sweep as stored.
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": patch}
        response = self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            SWEEP_PLURAL,
            name,
            body,
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )
        return _json(response)

    @_api_errors
    def ensure_transferjob(self, body: Json) -> tuple[Json, bool]:
        """Create a sweep's trial TransferJob unless one of that name exists; return it and whether this
        call created it (the caller checks that an existing one is the sweep's)."""
        ns = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        try:
            created = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, body, field_manager=FIELD_MANAGER, _preload_content=False
            )
            return _json(created), True
        except ApiException as error:
            if error.status != 409:
                raise
        existing = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, _preload_content=False
        )
        return _json(existing), False

    @_api_errors
    def patch_transferjob(self, namespace: str, name: str, patch: Json) -> None:
        """Merge-patch a TransferJob's spec (a sweep suspending or resuming its trial)."""
        _drain(
            self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )

    @_api_errors
    def delete_transferjob(self, namespace: str, name: str, uid: str) -> None:
        """Delete the TransferJob (its Job and pods follow by garbage collection).

        The uid precondition makes sure a TransferJob re-created under the same name is left alone.
        """
        with contextlib.suppress(ApiException):
            _drain(
                self.custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    body={"preconditions": {"uid": uid}, "propagationPolicy": "Background"},
                    _preload_content=False,
                )
            )

    @_api_errors
    def post_event(self, obj: Json, kind: str, reason: str, message: str, component: str) -> None:
        """Post a core/v1 Event about a TransferJob (what `kubectl describe` and `tj events` show)."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        if len(message) > MAX_EVENT_MESSAGE:
            message = message[: MAX_EVENT_MESSAGE - 3] + "..."
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "action": reason,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": INSTANCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        _drain(self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False))

    @_api_errors
    def list_events(self, namespace: str, uid: str) -> list[Json]:
        """The core/v1 Events about one object (a training pod or Job), by its uid."""
        response = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.uid={uid}", _preload_content=False
        )
        return list(_json(response).get("items") or [])

    @_api_errors
    def read_log(self, namespace: str, pod: str) -> str:
        """The trainer's whole log, for rebuilding a history that the operator did not see live."""
        response = self.core.read_namespaced_pod_log(
            pod, namespace, container=CONTAINER, _preload_content=False, _request_timeout=(10, 60)
        )
        return _drain(response).decode("utf-8", "replace")


class LogFollower:
    """Follows one pod's trainer log in a thread and feeds progress lines to a `SharedProgress`.

    The stream is read from the start, so a follower started late (or after an operator restart) sees
    every epoch; `Progress.apply` is idempotent, so reading a line twice is harmless.
    """

    def __init__(self, kube: Kube, namespace: str, pod: str, progress: SharedProgress) -> None:
        self.kube = kube
        self.namespace = namespace
        self.pod = pod
        self.progress = progress
        self._response: Any = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-{namespace}/{pod}", daemon=True)

    def start(self) -> LogFollower:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Break the stream so the thread ends; safe to call more than once."""
        self._stopping.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
            with contextlib.suppress(Exception):
                response.close()

    def _run(self) -> None:
        try:
            response = self.kube.core.read_namespaced_pod_log(
                self.pod,
                self.namespace,
                container=CONTAINER,
                follow=True,
                _preload_content=False,
                # A quiet trainer ends the stream after this long; the loop then follows it again.
                _request_timeout=(10, 900),
            )
        except Exception as error:  # the pod went away or is not started yet: the loop retries
            log.debug("cannot follow %s/%s: %s", self.namespace, self.pod, error)
            self.progress.poke()
            return
        self._response = response
        pending = b""
        try:
            for chunk in response.stream(4096, decode_content=True):
                if self._stopping.is_set():
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.progress.apply_line(line)
            if pending and not self._stopping.is_set():
                self.progress.apply_line(pending)
        except Exception as error:  # a dropped connection ends this follower; the loop starts another
            if not self._stopping.is_set():
                log.debug("log stream of %s/%s ended: %s", self.namespace, self.pod, error)
        finally:
            with contextlib.suppress(Exception):
                response.release_conn()
            if not self._stopping.is_set():
                self.progress.poke()  # the loop follows the log again if the pod is still running
