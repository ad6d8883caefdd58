"""TransferJobs as custom resources on a cluster, through the official `kubernetes` client.

Configuration follows kubectl: an explicit kubeconfig, else `$KUBECONFIG` or `~/.kube/config`, else the
in-cluster service account; the namespace is the explicit one, else the kubeconfig context's, else the
pod's own, else `default`. Changes arrive through Kubernetes watches (resumed after a `410 Gone`),
never through polling, so `wait` returns the moment the operator writes the final status.

`events` and `logs` follow the TransferJob object, not its name: Events whose `involvedObject.uid` is
its uid, and pods of the Jobs it owns, so a TransferJob created again under an old name never shows
its predecessor's history. A 404 says what is missing: the namespace, the TransferJob API, or the job.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from transferjob.backends.base import Backend, JobEvent, default_generate_name
from transferjob.constants import GROUP, KIND, LABEL_JOB_NAME, PLURAL, SWEEP_PLURAL, VERSION
from transferjob.errors import (
    BackendError,
    JobExistsError,
    JobNotFoundError,
    NamespaceNotFoundError,
    OutputUnreadableError,
    SpecError,
    SweepNotFoundError,
    TransferJobError,
)
from transferjob.models import TransferJob
from transferjob.serving import ISVC_API_VERSION, ISVC_GROUP, ISVC_KIND, ISVC_PLURAL, ISVC_VERSION
from transferjob.status import TERMINAL_PHASES
from transferjob.sweeps import TransferSweep

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Fields of a PersistentVolume's spec that are not where its files are.
_NOT_A_VOLUME_SOURCE = frozenset(
    {
        "access_modes",
        "capacity",
        "claim_ref",
        "mount_options",
        "node_affinity",
        "persistent_volume_reclaim_policy",
        "storage_class_name",
        "volume_attributes_class_name",
        "volume_mode",
    }
)
#: Longest single watch request; the server ends it and we reconnect, which also re-checks deadlines.
_WATCH_SECONDS = 60


def api_error(error: ApiException) -> str:
    """The API server's own message (e.g. a CEL rule's text), not the HTTP dump."""
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(error.body or "")
        return str(body.get("message") or error.reason)
    return f"{error.status} {error.reason}"


def _details(error: ApiException) -> dict[str, Any] | None:
    """The `details` of the API server's Status response (what was not found, the invalid fields);
    None when the response is not a Status (a proxy's page, no body)."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = json.loads(error.body or "")
        if body.get("kind") == "Status":
            return dict(body.get("details") or {})
    return None


def spec_problems(error: ApiException) -> list[str]:
    """Field-naming lines from a 422 Invalid response (one per cause), for `SpecError`."""
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(error.body or "")
        causes = (body.get("details") or {}).get("causes") or []
        lines = [f"{c.get('field') or 'spec'}: {c.get('message', '')}".strip() for c in causes]
        if lines:
            return lines
    return [f"spec: {api_error(error)}"]


def load_api_client(kubeconfig: str | Path | None, context: str | None) -> tuple[client.ApiClient, str]:
    """An API client and the namespace its configuration implies."""
    path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    path = path or str(Path.home() / ".kube" / "config")
    configuration = client.Configuration()
    if kubeconfig or Path(path).exists():
        try:
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except (ConfigException, OSError, ValueError) as error:
            raise BackendError(f"cannot use kubeconfig {path}: {error}") from error
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
        return client.ApiClient(configuration), namespace
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException as error:
        raise BackendError(
            f"no kubeconfig at {path} and not running in a cluster: pass --kubeconfig or set KUBECONFIG"
        ) from error
    namespace = _SA_NAMESPACE.read_text().strip() if _SA_NAMESPACE.exists() else "default"
    return client.ApiClient(configuration), namespace


class KubernetesBackend(Backend):
    """TransferJob custom resources in one namespace of one cluster."""

    def __init__(
        self,
        namespace: str | None = None,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        api_client: client.ApiClient | None = None,
    ) -> None:
        if api_client is None:
            api_client, default_namespace = load_api_client(kubeconfig, context)
        else:
            default_namespace = "default"
        self.namespace = namespace or default_namespace
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    def _call(self, name: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the API, turning its exceptions into the SDK's."""
        try:
            return func(*args, **kwargs)
        except ApiException as error:
            if error.status == 404:
                raise self._not_found(name, error) from error
            if error.status == 409:
                raise JobExistsError(name) from error
            if error.status == 422 or (error.status == 400 and "strict decoding error" in (error.body or "")):
                raise SpecError(spec_problems(error)) from error
            raise BackendError(f"{func.__name__}: {api_error(error)}") from error
        except (OSError, HTTPError) as error:  # refused, reset, timed out, TLS: urllib3's or the socket's
            raise BackendError(f"cannot reach the Kubernetes API: {error}") from error

    def _not_found(self, name: str, error: ApiException) -> TransferJobError:
        """What a 404 means. The API server answers a path it does not serve at all (no CRD) with a
        plain-text page, or a Status that names no object; a create in a missing namespace names the
        namespace; a read in a missing namespace is a plain 404 for the object, so the namespace is
        looked up. A 404 without a body (not from an API server) can only mean the job."""
        details = _details(error)
        if details is None and not error.body:
            return JobNotFoundError(name, self.namespace)
        if details is None or not details.get("name"):
            return BackendError(
                f"the cluster does not serve {KIND} ({GROUP}/{VERSION}): is the CRD installed? "
                "(kubectl apply -k manifests/)"
            )
        if details.get("kind") == "namespaces" or not self._namespace_exists():
            return NamespaceNotFoundError(self.namespace)
        return JobNotFoundError(name, self.namespace)

    def _namespace_exists(self) -> bool:
        """Whether the namespace exists; assumed so when we may not read it (a namespace-bound user)."""
        try:
            self.core.read_namespace(self.namespace)
        except ApiException as error:
            return error.status != 404
        except (OSError, HTTPError):
            return True
        return True

    # ------------------------------------------------------------ custom objects
    def create(self, job: TransferJob) -> TransferJob:
        body = job.model_copy(deep=True)
        body.metadata.namespace = self.namespace
        body.status = None
        if not body.metadata.name and not body.metadata.generate_name:
            body.metadata.generate_name = default_generate_name(body)
        created = self._call(
            body.metadata.name or body.metadata.generate_name or "",
            self.custom.create_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, body.to_dict(),
            field_validation="Strict",  # a misspelt field is an error, not silently pruned
        )  # fmt: skip
        return TransferJob.from_dict(created)

    def get(self, name: str) -> TransferJob:
        obj = self._call(
            name, self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
        )
        return TransferJob.from_dict(obj)

    def list(self, label_selector: str | None = None) -> builtins.list[TransferJob]:
        result = self._call(
            "",
            self.custom.list_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, label_selector=label_selector or "",
        )  # fmt: skip
        jobs = [TransferJob.from_dict(item) for item in result.get("items", [])]
        return sorted(jobs, key=lambda j: (j.metadata.creation_timestamp or _EPOCH, j.metadata.name or ""))

    def stream(self, name: str, timeout: float | None) -> Iterator[TransferJob]:
        deadline = None if timeout is None else time.monotonic() + timeout
        current = self.get(name)
        yield current
        version = current.metadata.resource_version
        while deadline is None or time.monotonic() < deadline:
            left = (
                _WATCH_SECONDS
                if deadline is None
                else max(1, min(_WATCH_SECONDS, deadline - time.monotonic()))
            )
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP, VERSION, self.namespace, PLURAL,
                    field_selector=f"metadata.name={name}", resource_version=version,
                    timeout_seconds=max(1, int(left)), allow_watch_bookmarks=True,
                    _request_timeout=left + 30,  # a connection that silently died must not hang us
                ):  # fmt: skip
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] == "DELETED":
                        raise JobNotFoundError(name, self.namespace)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        yield TransferJob.from_dict(obj)
            except (OSError, HTTPError) as error:
                raise BackendError(f"watching {name}: cannot reach the Kubernetes API: {error}") from error
            except ApiException as error:
                if error.status != 410:
                    raise BackendError(f"watching {name}: {api_error(error)}") from error
                current = self.get(name)  # our resourceVersion is too old: start again from now
                version = current.metadata.resource_version
                yield current
            finally:
                watcher.stop()

    def delete(self, name: str) -> None:
        self._call(
            name,
            self.custom.delete_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Background",
        )  # fmt: skip

    def fine_tune_source(self, job: TransferJob) -> dict[str, str]:
        return {"fromJob": job.metadata.name or ""}

    # ------------------------------------------------------------------- sweeps
    def _sweep_call(self, name: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """`_call` for TransferSweeps: the same errors, named for a sweep."""
        try:
            return self._call(name, func, *args, **kwargs)
        except JobNotFoundError as error:
            raise SweepNotFoundError(name, self.namespace) from error
        except JobExistsError as error:
            raise BackendError(
                f"TransferSweep {name!r} already exists; delete it or choose another name"
            ) from error

    def create_sweep(self, sweep: TransferSweep) -> TransferSweep:
        body = sweep.model_copy(deep=True)
        body.metadata.namespace = self.namespace
        body.status = None
        created = self._sweep_call(
            body.metadata.name or "",
            self.custom.create_namespaced_custom_object,
            GROUP, VERSION, self.namespace, SWEEP_PLURAL, body.to_dict(), field_validation="Strict",
        )  # fmt: skip
        return TransferSweep.from_dict(created)

    def get_sweep(self, name: str) -> TransferSweep:
        obj = self._sweep_call(
            name, self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, SWEEP_PLURAL, name
        )
        return TransferSweep.from_dict(obj)

    def delete_sweep(self, name: str) -> None:
        """Delete the sweep; the garbage collector deletes its trials (they are its dependents)."""
        self._sweep_call(
            name,
            self.custom.delete_namespaced_custom_object,
            GROUP, VERSION, self.namespace, SWEEP_PLURAL, name, propagation_policy="Background",
        )  # fmt: skip

    # ------------------------------------------------------------------ volumes
    def claim_folder(self, claim_name: str) -> Path:
        """The hostPath or local PersistentVolume path the claim is bound to (see `Backend`).

        Whether that path is on this machine is for the reader to find out: the claim says nothing
        of which node the reader runs on.
        """
        what = f"PersistentVolumeClaim {claim_name!r} in namespace {self.namespace!r}"
        claim = self._read_volume(
            what, lambda: self.core.read_namespaced_persistent_volume_claim(claim_name, self.namespace)
        )
        volume = claim.spec.volume_name if claim.spec else None
        if not volume:
            raise OutputUnreadableError(f"{what} is not bound to a PersistentVolume")
        spec = self._read_volume(
            f"PersistentVolume {volume!r}", lambda: self.core.read_persistent_volume(volume)
        ).spec
        path = spec.host_path.path if spec.host_path else spec.local.path if spec.local else None
        if path is None:
            kinds = [k for k, v in spec.to_dict().items() if v and k not in _NOT_A_VOLUME_SOURCE]
            raise OutputUnreadableError(
                f"{what} is bound to PersistentVolume {volume!r} ({', '.join(kinds) or 'no source'}), which "
                "is not a folder on a node (hostPath or local): only the pods that mount it see its files"
            )
        return Path(path)

    @staticmethod
    def _read_volume(what: str, read: Callable[[], Any]) -> Any:
        """A claim or a volume; what keeps it from being read, as an error naming it."""
        try:
            return read()
        except ApiException as error:
            why = "does not exist" if error.status == 404 else f"cannot be read: {api_error(error)}"
            raise OutputUnreadableError(f"{what} {why}") from error
        except (OSError, HTTPError) as error:
            raise BackendError(f"cannot reach the Kubernetes API: {error}") from error

    # ------------------------------------------------------------------ serving
    def create_inference_service(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a KServe InferenceService (`serving.inference_service`) in this namespace.

        Strict field validation, as for TransferJobs: a field this KServe does not know is an error,
        not silently dropped. A 404 that names no object means the cluster does not serve the API.
        """
        name = str(manifest["metadata"]["name"])
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        try:
            created: Any = self.custom.create_namespaced_custom_object(
                ISVC_GROUP, ISVC_VERSION, self.namespace, ISVC_PLURAL, body, field_validation="Strict"
            )
        except ApiException as error:
            details = _details(error)
            if error.status == 404 and (details is None or not details.get("name")):
                raise BackendError(
                    f"the cluster does not serve {ISVC_KIND} ({ISVC_API_VERSION}): is KServe installed?"
                ) from error
            if error.status == 404:
                raise NamespaceNotFoundError(self.namespace) from error
            if error.status == 409:
                raise BackendError(
                    f"{ISVC_KIND} {name!r} already exists in namespace {self.namespace!r}; delete it or "
                    "choose another name"
                ) from error
            raise BackendError(f"cannot create {ISVC_KIND} {name!r}: {api_error(error)}") from error
        except (OSError, HTTPError) as error:
            raise BackendError(f"cannot reach the Kubernetes API: {error}") from error
        return dict(created)

    # ----------------------------------------------------------- events and logs
    def events(self, name: str) -> builtins.list[JobEvent]:
        uid = self.get(name).metadata.uid
        result = self._call(
            name,
            self.core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.uid={uid},involvedObject.kind={KIND}",
        )
        events = [
            JobEvent(
                type=e.type or "Normal",
                reason=e.reason or "",
                message=e.message or "",
                time=e.last_timestamp or e.event_time or e.first_timestamp or e.metadata.creation_timestamp,
                count=e.count or 1,
            )
            for e in result.items
        ]
        return sorted(events, key=lambda e: e.time or _EPOCH)

    def _pods(self, name: str, uid: str) -> builtins.list[client.V1Pod]:
        """The training pods of the TransferJob with this uid, oldest first (a retry is a newer pod).

        The label finds every pod of the name; ownership keeps those of the Jobs this TransferJob
        owns, not those of an earlier TransferJob of the same name that are still being deleted.
        """
        selector = f"{LABEL_JOB_NAME}={name}"
        jobs = self._call(name, self.batch.list_namespaced_job, self.namespace, label_selector=selector)
        owned = {j.metadata.uid for j in jobs.items if uid in _owners(j)}
        pods = self._call(name, self.core.list_namespaced_pod, self.namespace, label_selector=selector)
        mine = [p for p in pods.items if owned & _owners(p)]
        return sorted(mine, key=lambda p: (_created(p), _uid(p)))

    def logs(self, name: str, follow: bool, tail: int | None) -> Iterator[str]:
        uid = self.get(name).metadata.uid or ""  # not found is an error, not an empty log
        done: dict[str, int] = {}  # pod uid -> container runs whose log we have read
        first = True
        while True:
            pod = self._next_pod(name, uid, done, wait=follow)
            if pod is None:
                return
            runs, pod_uid = _container_runs(pod), _uid(pod)
            yield from self._pod_log(pod, follow, tail if first else None)
            first = False
            done[pod_uid] = runs
            if not follow:
                return

    def _next_pod(self, name: str, uid: str, done: dict[str, int], wait: bool) -> client.V1Pod | None:
        """The oldest pod with a container run we have not read; waits for one when `wait`.

        A retried job gets a new pod (and a restarted container a new run), so `logs(follow=True)`
        moves on to it; it stops once the TransferJob has finished (or was replaced by a new one of the
        same name) and every run has been read.
        """
        while True:
            pods = self._pods(name, uid)
            if not wait:
                started = [p for p in pods if _container_runs(p) > 0]
                return started[-1] if started else None
            unread = [p for p in pods if _container_runs(p) > done.get(_uid(p), 0)]
            if unread:
                return unread[0]
            job = self.get(name)
            if job.metadata.uid != uid or (job.status and job.status.phase in TERMINAL_PHASES):
                return None
            watcher = watch.Watch()
            try:  # sleep until some pod of the job changes (or 10s pass: re-check the job's phase)
                for _ in watcher.stream(
                    self.core.list_namespaced_pod, self.namespace,
                    label_selector=f"{LABEL_JOB_NAME}={name}", timeout_seconds=10,
                ):  # fmt: skip
                    break
            except ApiException:
                time.sleep(1)
            finally:
                watcher.stop()

    def _pod_log(self, pod: client.V1Pod, follow: bool, tail: int | None) -> Iterator[str]:
        kwargs: dict[str, Any] = {"follow": follow}
        if tail is not None:
            kwargs["tail_lines"] = tail
        name = pod.metadata.name if pod.metadata and pod.metadata.name else ""
        try:
            if follow:
                watcher = watch.Watch()
                try:
                    yield from watcher.stream(
                        self.core.read_namespaced_pod_log, name, self.namespace, **kwargs
                    )
                finally:
                    watcher.stop()
            else:
                text = self.core.read_namespaced_pod_log(name, self.namespace, **kwargs)
                yield from text.splitlines()
        except ApiException as error:
            if error.status not in (400, 404):  # gone or not started after all: the next pod tells
                raise BackendError(f"logs of pod {name}: {api_error(error)}") from error


def _uid(pod: client.V1Pod) -> str:
    return (pod.metadata.uid if pod.metadata else None) or ""


def _owners(obj: client.V1Pod | client.V1Job) -> set[str]:
    """The uids of the objects that own `obj` (a pod's Job, a Job's TransferJob)."""
    return {ref.uid for ref in (obj.metadata.owner_references if obj.metadata else None) or []}


def _created(pod: client.V1Pod) -> dt.datetime:
    return (pod.metadata.creation_timestamp if pod.metadata else None) or _EPOCH


def _container_runs(pod: client.V1Pod) -> int:
    """How many times the pod's container has started (0: not yet; restarts add one each)."""
    statuses = (pod.status and pod.status.container_statuses) or []
    if not statuses:
        return 0
    state = statuses[0].state
    started = bool(state and (state.running or state.terminated))
    return (statuses[0].restart_count or 0) + (1 if started else 0)


_EPOCH = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
