"""Probe pods for the real-node tests: restricted-profile pods running a Python snippet in our image."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from transferjob_testing.cluster.kube import wait_for


def probe_pod(
    name: str,
    image: str,
    script: str,
    limits: dict[str, str] | None = None,
    token: bool = False,
) -> dict[str, Any]:
    """A pod that passes Pod Security "restricted" and runs ``python3 -c script`` once."""
    container: dict[str, Any] = {
        "name": "probe",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", script],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if limits:
        container["resources"] = {"limits": limits, "requests": limits}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": token,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
        },
    }


def run_to_end(api: client.ApiClient, namespace: str, body: dict[str, Any], timeout: float = 120.0) -> Any:
    """Create the pod and return it once it Succeeded or Failed."""
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, body)
    name = body["metadata"]["name"]

    def ended() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    return wait_for(ended, timeout=timeout, interval=0.3, what=f"pod {name} to end")


def logs(api: client.ApiClient, namespace: str, name: str) -> str:
    return str(client.CoreV1Api(api).read_namespaced_pod_log(name, namespace))


def wait_pod_condition(
    api: client.ApiClient, namespace: str, name: str, ctype: str, status: str, timeout: float = 60.0
) -> Any:
    """The pod's condition ``ctype`` once it has ``status`` (e.g. PodScheduled=False)."""
    core = client.CoreV1Api(api)

    def reached() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        for cond in (pod.status.conditions if pod.status else None) or []:
            if cond.type == ctype and cond.status == status:
                return cond
        return None

    return wait_for(reached, timeout=timeout, interval=0.3, what=f"{name} {ctype}={status}")
