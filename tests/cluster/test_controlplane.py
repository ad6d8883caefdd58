"""The test control plane and the node agent are real: CRDs, the Job controller, the scheduler, the
garbage collector, PodSecurity admission and kubelet-style log streaming all behave as in a cluster.

These tests guard the infrastructure every other cluster/e2e test stands on; they are kept fast.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.agent_process import AgentProcess
from transferjob_testing.cluster.kube import load_documents, wait_for

pytestmark = pytest.mark.cluster

CRD = "manifests/crd/transferjob.io_transferjobs.yaml"
EXAMPLE = "manifests/examples/01-feature-extraction.yaml"


def _api_error(exc: client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    except (TypeError, ValueError):
        return str(exc.body)


def _job(name: str, script: str, **pod_extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "registry.invalid/transferjob-trainer:test",  # recorded, never pulled
        "command": ["python", "-c", textwrap.dedent(script)],
    }
    container.update(pod_extra.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container], **pod_extra}},
        },
    }


def _job_condition(batch: Any, ns: str, name: str) -> str | None:
    job = batch.read_namespaced_job(name, ns)
    for cond in job.status.conditions or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return str(cond.type)
    return None


def _pods(core: Any, ns: str, selector: str) -> list[Any]:
    """Pods as ``Any``: the generated models make every field Optional, which tests assert anyway."""
    return list(core.list_namespaced_pod(ns, label_selector=selector).items)


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


JOB_SCRIPT = """
    import json, os, sys, time
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    print("api:", os.environ["KUBERNETES_SERVICE_HOST"], file=sys.stderr)
    time.sleep(0.3)  # stdout and stderr are separate pipes: keep the stderr line first in the log
    print("spec:", open(spec_path).read().strip())
    print("pod:", os.environ["POD_NAME"], "mode:", os.environ["MODE"], "token:", os.environ["TOKEN"])
    print("mapped:", sorted(json.loads(os.environ["TJ_PATH_MAP"])))
    open(os.path.join(out_dir, "model.txt"), "w").write("exported")
    with open("/dev/termination-log", "w") as f:  # literal container paths in a command are rewritten
        json.dump({"event": "finished", "accuracy": 0.99}, f)
    print("done", sys.executable)
"""


def test_job_runs_to_completion_with_logs(
    node_agent: AgentProcess,
    api_client: client.ApiClient,
    namespace: str,
    kubectl: Callable[..., Any],
    tmp_path: Path,
) -> None:
    core: Any = client.CoreV1Api(api_client)
    batch: Any = client.BatchV1Api(api_client)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "spec"}, "data": {"spec.yaml": "epochs: 5"}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    out = tmp_path / "out"
    job = _job(
        "hello",
        JOB_SCRIPT,
        container={
            "args": ["/etc/tj/spec.yaml", "/output"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "spec", "key": "spec.yaml"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            ],
            "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "1", "memory": "1Gi"}},
            "volumeMounts": [
                {"name": "spec", "mountPath": "/etc/tj"},
                {"name": "out", "mountPath": "/output"},
            ],
        },
        volumes=[
            {"name": "spec", "configMap": {"name": "spec"}},
            {"name": "out", "hostPath": {"path": str(out), "type": "DirectoryOrCreate"}},
        ],
    )
    batch.create_namespaced_job(namespace, job)
    assert (
        wait_for(lambda: _job_condition(batch, namespace, "hello"), timeout=60, what="Job finished")
        == "Complete"
    )

    (pod,) = _pods(core, namespace, "job-name=hello")
    node = core.read_node(pod.spec.node_name)  # scheduled onto a node of a test agent (ours or cluster-up's)
    assert node.metadata.labels.get("node.transferjob.io/agent") == "process"
    assert pod.status.phase == "Succeeded"
    assert pod.status.pod_ip == "127.0.0.1"
    term = pod.status.container_statuses[0].state.terminated
    assert term.exit_code == 0 and term.reason == "Completed"
    assert term.started_at is not None and term.finished_at is not None
    assert json.loads(term.message) == {"event": "finished", "accuracy": 0.99}
    assert (out / "model.txt").read_text() == "exported"

    logs = kubectl("logs", "-n", namespace, "job/hello").stdout
    assert "spec: epochs: 5" in logs
    assert f"pod: {pod.metadata.name} mode: epochs: 5 token: s3cret" in logs
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"  # the projected API token volume
    assert f"mapped: ['/dev/termination-log', '/etc/tj', '/output', '{sa_dir}']" in logs
    assert "api: 127.0.0.1" in logs  # stderr is in the log too; never the service ClusterIP
    tail = kubectl("logs", "-n", namespace, pod.metadata.name, "--tail=1").stdout
    assert tail.startswith("done ") and tail.count("\n") == 1


def test_logs_follow_streams_while_running(
    node_agent: AgentProcess, api_client: client.ApiClient, namespace: str, kubectl: Callable[..., Any]
) -> None:
    core: Any = client.CoreV1Api(api_client)
    script = "import time\nfor i in range(4):\n    print('tick', i)\n    time.sleep(0.7)\n"
    pod = {
        "metadata": {"name": "ticker"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "tick", "image": "python:3.11", "command": ["python3", "-c", script]}],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core.read_namespaced_pod("ticker", namespace).status.phase in ("Running", "Succeeded"),
        timeout=30,
        what="ticker running",
    )
    started = time.monotonic()
    resp = core.read_namespaced_pod_log("ticker", namespace, follow=True, _preload_content=False)
    first_at: float | None = None
    text = ""
    for chunk in resp.stream(64):
        text += chunk.decode()
        if first_at is None and "tick" in text:
            first_at = time.monotonic() - started
    assert text.splitlines() == [f"tick {i}" for i in range(4)]
    assert first_at is not None and first_at < 2.0, "follow must stream, not wait for the end"
    follow = kubectl("logs", "-f", "-n", namespace, "ticker", "--timestamps").stdout
    assert len(follow.splitlines()) == 4 and follow.split()[0].endswith("Z")


def test_failed_container_reports_exit_code_and_message(
    node_agent: AgentProcess, api_client: client.ApiClient, namespace: str
) -> None:
    core: Any = client.CoreV1Api(api_client)
    pod = {
        "metadata": {"name": "crash"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "trainer:test",
                    "command": ["python", "-c", "import sys; print('reason: OOM-ish'); sys.exit(3)"],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core.read_namespaced_pod("crash", namespace).status.phase == "Failed",
        timeout=30,
        what="pod Failed",
    )
    status = core.read_namespaced_pod("crash", namespace).status
    term = status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (3, "Error")
    assert term.message.strip() == "reason: OOM-ish"


def test_too_many_gpus_stays_pending_unschedulable(
    node_agent: AgentProcess, api_client: client.ApiClient, namespace: str
) -> None:
    core: Any = client.CoreV1Api(api_client)
    pod = {
        "metadata": {"name": "greedy"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "trainer:test",
                    "command": ["python", "-c", "pass"],
                    "resources": {"limits": {"nvidia.com/gpu": "3"}},  # each node has 2
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)

    def unschedulable() -> Any:
        st = core.read_namespaced_pod("greedy", namespace).status
        return next(
            (c for c in st.conditions or [] if c.type == "PodScheduled" and c.reason == "Unschedulable"), None
        )

    cond = wait_for(unschedulable, timeout=30, what="Unschedulable condition")
    assert cond.status == "False"
    assert "Insufficient nvidia.com/gpu" in cond.message
    assert core.read_namespaced_pod("greedy", namespace).status.phase == "Pending"


def test_deleting_owner_garbage_collects_job_and_pods(
    node_agent: AgentProcess, api_client: client.ApiClient, namespace: str
) -> None:
    core: Any = client.CoreV1Api(api_client)
    batch: Any = client.BatchV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    job = _job("sleeper", "import time; time.sleep(300)", terminationGracePeriodSeconds=5)
    job["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    ]
    batch.create_namespaced_job(namespace, job)

    def running_pid() -> int | None:
        for pod in _pods(core, namespace, "job-name=sleeper"):
            for cs in pod.status.container_statuses or []:
                if cs.state.running and cs.container_id:
                    return int(cs.container_id.removeprefix("process://"))
        return None

    pid = wait_for(running_pid, timeout=30, what="sleeper running")
    os.kill(pid, 0)  # the container really is a local process
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def job_gone() -> bool:
        try:
            batch.read_namespaced_job("sleeper", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(job_gone, timeout=30, what="Job garbage-collected")
    wait_for(
        lambda: not _pods(core, namespace, "job-name=sleeper"), timeout=30, what="pods garbage-collected"
    )
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=10, what="process killed")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


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
