"""Small helpers test authors need around a cluster: apply YAML, run kubectl, wait for a condition.

``apply_yaml`` uses server-side apply through the Python dynamic client (no kubectl needed), so a
CRD applied in one document can be followed by its custom resources in the next.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from transferjob import yamlio

FIELD_MANAGER = "transferjob-tests"
T = TypeVar("T")


def load_documents(source: Path | str) -> list[dict[str, Any]]:
    """YAML documents from a file path or a YAML string (empty documents dropped)."""
    text = source.read_text() if isinstance(source, Path) else source
    return [d for d in yamlio.load_all(text) if d]


def apply_yaml(
    api: client.ApiClient, source: Path | str, namespace: str | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Server-side apply every document of ``source``; returns the applied objects as dicts.

    ``namespace`` fills in namespaced objects that name none. A kind that is not discoverable yet
    (a CRD applied a moment ago) is retried with a fresh discovery cache until ``timeout``.
    """
    dyn = DynamicClient(api)
    out: list[dict[str, Any]] = []
    for doc in load_documents(source):
        deadline = time.monotonic() + timeout
        while True:
            try:
                resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
                break
            except ResourceNotFoundError:
                if time.monotonic() > deadline:
                    raise
                dyn.resources.invalidate_cache()
                time.sleep(0.5)
        ns = None
        if resource.namespaced:
            ns = doc.get("metadata", {}).get("namespace") or namespace or "default"
        applied = dyn.server_side_apply(
            resource,
            body=doc,
            name=doc["metadata"]["name"],
            namespace=ns,
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        out.append(applied.to_dict())
    return out


def kubectl(
    kubeconfig: Path, *args: str, check: bool = True, timeout: float = 60.0, binary: str = "kubectl"
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against the test cluster and capture its output (``check`` raises with stderr)."""
    proc = subprocess.run(
        [binary, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def wait_for(
    check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> T:
    """Poll ``check`` until it returns something truthy; that value is returned, else AssertionError."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value: {last!r}")


def wait_until_served(api_client: Any, group: str, version: str, plural: str, namespace: str) -> None:
    """Return once the API server serves a just-applied custom resource: listing it works.

    Right after a CRD is created the API server answers 404 for its resources until the CRD is
    Established and its handler installed; that 404 means "not yet", not an error.
    """
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)

    def served() -> bool:
        try:
            custom.list_namespaced_custom_object(group, version, namespace, plural)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    wait_for(served, timeout=30, what=f"{plural}.{group}/{version} served")


@contextlib.contextmanager
def temporary_namespace(
    api: client.ApiClient, prefix: str, labels: dict[str, str] | None = None
) -> Iterator[str]:
    """A fresh namespace `<prefix>-<hex>`, yielded once its default ServiceAccount exists (pods need
    it), and deleted afterwards."""
    core: Any = client.CoreV1Api(api)  # dict bodies; the generated signatures want models
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except client.ApiException:
            return False

    wait_for(default_sa, timeout=30, what=f"ServiceAccount default in {name}")
    try:
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(name)
        # The namespace controller deletes the pods with their own grace period (30 s unless they say
        # otherwise), which a pod that ignores SIGTERM (a probe's `sleep`) spends in full. The test is
        # over: a second delete shortens it to 1 s. Not 0: a forced delete drops the pod object while
        # its containers still run, and the next test's pod would meet a node still holding them. The
        # namespace is Terminating first, so no controller can create a pod in it meanwhile.
        with contextlib.suppress(client.ApiException):
            core.delete_collection_namespaced_pod(name, grace_period_seconds=1)
        release_node(core, name)


#: Pods in these phases hold nothing on the node: the scheduler no longer counts their requests.
TERMINAL_POD_PHASES = ("Succeeded", "Failed")


def release_node(core: Any, namespace: str, timeout: float = 120.0) -> None:
    """Return once no pod of a deleted namespace holds node resources any more.

    The real node has 2 CPUs and 2 GPUs and every training pod asks for one of each: a pod still
    terminating from the test before would leave the next test's pod Unschedulable for as long as it
    takes to stop, so each test hands the node back as it found it. Waiting for the namespace itself to
    vanish would cost more (its finalizers run after the pods are gone) and buy nothing.
    """

    left: list[str] = []

    def released() -> bool:
        try:
            pods = core.list_namespaced_pod(namespace).items
        except client.ApiException:
            return True  # the namespace is gone, and its pods with it
        left[:] = [
            f"{pod.metadata.name} ({pod.status.phase if pod.status else 'no status'})"
            for pod in pods
            if pod.status is None or pod.status.phase not in TERMINAL_POD_PHASES
        ]
        return not left

    try:
        wait_for(released, timeout=timeout, interval=0.5, what=f"the pods of namespace {namespace} to stop")
    except AssertionError as error:
        raise AssertionError(f"{error}: still holding the node: {', '.join(left)}") from None
