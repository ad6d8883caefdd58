"""The test control plane is real: CRDs (served, pruned, validated with CEL) and PodSecurity admission
behave as in a cluster.

These tests guard the infrastructure every other cluster test stands on; they are kept fast. What a
node adds (Jobs that run, logs, exit codes, garbage collection of running pods, hostPath checks) is
tested on the real node in tests/node/test_workloads.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.kube import load_documents, wait_for

pytestmark = pytest.mark.cluster

CRD = "manifests/crd/transferjob.io_transferjobs.yaml"
EXAMPLE = "manifests/examples/01-feature-extraction.yaml"


def _api_error(exc: client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    except (TypeError, ValueError):
        return str(exc.body)


def test_crd_applies_serves_prunes_and_validates(
    repo_root: Path,
    api_client: client.ApiClient,
    apply_yaml: Callable[..., Any],
    namespace: str,
    kubectl: Callable[..., Any],
) -> None:
    apply_yaml(repo_root / CRD)
    ext: Any = client.ApiextensionsV1Api(api_client)

    def established() -> bool:
        crd = ext.read_custom_resource_definition("transferjobs.transferjob.io")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, timeout=30, what="TransferJob CRD Established")

    custom = client.CustomObjectsApi(api_client)
    tj = load_documents(repo_root / EXAMPLE)[0]
    tj["spec"]["notAField"] = "pruned"
    tj["spec"]["model"]["alsoNotAField"] = 1
    created = wait_for(
        lambda: _try_create(custom, namespace, tj), timeout=20, what="TransferJob accepted (CRD served)"
    )
    assert "notAField" not in created["spec"]
    assert "alsoNotAField" not in created["spec"]["model"]
    assert created["spec"]["model"]["imageSize"] == 224  # schema default applied by the API server
    out = kubectl("get", "tj", "-n", namespace, "-o", "name").stdout
    assert f"transferjob.transferjob.io/{tj['metadata']['name']}" in out

    bad = load_documents(repo_root / EXAMPLE)[0]
    bad["metadata"]["name"] = "bad-mode"
    bad["spec"]["mode"] = "Distillation"
    with pytest.raises(client.ApiException) as enum_err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bad)
    assert enum_err.value.status == 422
    assert 'spec.mode: Unsupported value: "Distillation"' in _api_error(enum_err.value)

    cel = load_documents(repo_root / EXAMPLE)[0]
    cel["metadata"]["name"] = "bad-cel"
    cel["spec"]["model"].update(fromJob="earlier", fromModel="/models/x.keras")
    with pytest.raises(client.ApiException) as cel_err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, cel)
    assert cel_err.value.status == 422
    assert "fromJob and fromModel are mutually exclusive" in _api_error(cel_err.value)


def _try_create(custom: Any, ns: str, body: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return dict(custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body))
    except client.ApiException as exc:
        if exc.status == 404:  # discovery of the new group not finished yet
            return None
        raise


def test_restricted_namespace_rejects_privileged_pod(api_client: client.ApiClient, namespace: str) -> None:
    core: Any = client.CoreV1Api(api_client)
    core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
        _content_type="application/merge-patch+json",
    )
    pod = {
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_pod(namespace, pod)
    assert err.value.status == 403
    message = _api_error(err.value)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "privileged" in message
