"""A hostPath of type `Directory` that is not there is refused as the kubelet refuses it, and not created.

The operator mounts every hostPath with type `Directory` so that a typo leaves nothing on the node; the
test node agent must then behave as the kubelet does: the pod waits in ContainerCreating with a
FailedMount event naming the path, and starts once the folder exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from transferjob_testing.cluster.agent_process import AgentProcess
from transferjob_testing.cluster.kube import wait_for


def _failed_mounts(core: Any, namespace: str, pod: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [e.message for e in events if e.reason == "FailedMount" and e.type == "Warning"]


def test_missing_directory_is_a_failed_mount_and_is_not_created(
    node_agent: AgentProcess, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    del node_agent  # only needed to run the pod
    core: Any = client.CoreV1Api(api_client)
    typo = tmp_path / "dgits"
    pod = {
        "metadata": {"name": "typo"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "reader",
                    "image": "python:3.11",
                    "command": ["python3", "-c", "import os; print(sorted(os.listdir('/data')))"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "data", "hostPath": {"path": str(typo), "type": "Directory"}}],
        },
    }
    core.create_namespaced_pod(namespace, pod)

    messages = wait_for(lambda: _failed_mounts(core, namespace, "typo"), timeout=60, what="FailedMount event")
    check = f"hostPath type check failed: {typo} is not a directory"
    expected = f'MountVolume.SetUp failed for volume "data" : {check}'
    assert messages == [expected]
    status = core.read_namespaced_pod_status("typo", namespace).status
    assert status.phase == "Pending"
    assert status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    assert not typo.exists(), "the agent created the folder a typo named"

    typo.mkdir()
    (typo / "cat.png").write_bytes(b"")
    wait_for(
        lambda: core.read_namespaced_pod_status("typo", namespace).status.phase == "Succeeded",
        timeout=60,
        what="pod started once the folder exists",
    )
    assert _failed_mounts(core, namespace, "typo") == [expected]  # no repeat for the same failure
