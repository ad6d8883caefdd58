"""What the operator asks of every node, on the real one: a Job runs with its ConfigMap, Secret and
hostPath, logs stream while it runs, a failure keeps its exit code and words, the garbage collector
stops what it deletes, and a hostPath of type `Directory` that is not there is refused, never created.

The operator's own behaviour on top of these is tested in tests/operator/; these guard the ground it
stands on (the same kubelet, containerd and runc a cluster runs).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.node.pods import probe_pod, run_to_end
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.node import POD_CIDR, crictl_command
from transferjob_testing.cluster.volumes import hand_to_trainer

pytestmark = [pytest.mark.timeout(300)]

JOB_SCRIPT = """
    import json, os, sys, time
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    print("api:", os.environ["KUBERNETES_SERVICE_HOST"], file=sys.stderr)
    time.sleep(0.3)  # stdout and stderr are separate pipes: keep the stderr line first in the log
    print("spec:", open(spec_path).read().strip())
    print("pod:", os.environ["POD_NAME"], "mode:", os.environ["MODE"], "token:", os.environ["TOKEN"])
    open(os.path.join(out_dir, "model.txt"), "w").write("exported")
    with open("/dev/termination-log", "w") as f:
        json.dump({"event": "finished", "accuracy": 0.99}, f)
    print("done", os.getuid())
"""


def _job(name: str, image: str, script: str, **container: Any) -> dict[str, Any]:
    """A Job of one probe container (restricted profile, UID 1000) running ``script``, no retries."""
    pod = probe_pod(name, image, textwrap.dedent(script))
    pod["spec"]["containers"][0].update(container)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod["spec"]}},
    }


def _finished(batch: Any, namespace: str, name: str) -> str | None:
    job = batch.read_namespaced_job(name, namespace)
    for cond in job.status.conditions or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return str(cond.type)
    return None


def _pods(core: Any, namespace: str, job: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def test_job_runs_with_its_config_secret_and_host_path(
    real_api: Any, node_namespace: str, real_kubectl: Any, probe_image: str, tmp_path: Path
) -> None:
    core: Any = client.CoreV1Api(real_api)
    batch: Any = client.BatchV1Api(real_api)
    ns = node_namespace
    core.create_namespaced_config_map(ns, {"metadata": {"name": "spec"}, "data": {"spec.yaml": "epochs: 5"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    out = tmp_path / "out"
    hand_to_trainer(out)
    job = _job(
        "hello",
        probe_image,
        JOB_SCRIPT,
        args=["/etc/tj/spec.yaml", "/output"],
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "spec", "key": "spec.yaml"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        ],
        resources={"limits": {"nvidia.com/gpu": "1", "cpu": "500m", "memory": "256Mi"}},
        volumeMounts=[{"name": "spec", "mountPath": "/etc/tj"}, {"name": "out", "mountPath": "/output"}],
    )
    job["spec"]["template"]["spec"]["volumes"] = [
        {"name": "spec", "configMap": {"name": "spec"}},
        {"name": "out", "hostPath": {"path": str(out), "type": "Directory"}},
    ]
    batch.create_namespaced_job(ns, job)
    assert (
        wait_for(lambda: _finished(batch, ns, "hello"), timeout=120, what="the Job to finish") == "Complete"
    )

    (pod,) = _pods(core, ns, "hello")
    assert pod.status.phase == "Succeeded"
    assert pod.status.pod_ip.startswith(POD_CIDR.rsplit(".", 1)[0] + "."), pod.status.pod_ip
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (0, "Completed")
    assert term.started_at is not None and term.finished_at is not None
    assert json.loads(term.message) == {"event": "finished", "accuracy": 0.99}
    assert (out / "model.txt").read_text() == "exported"
    assert (out / "model.txt").stat().st_uid == 1000  # written as the pod's user, not root

    service_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    log = real_kubectl("logs", "-n", ns, "job/hello").stdout
    assert f"api: {service_ip}" in log  # stderr is in the log too; the Service, through kube-proxy
    assert "spec: epochs: 5" in log
    assert f"pod: {pod.metadata.name} mode: epochs: 5 token: s3cret" in log
    tail = real_kubectl("logs", "-n", ns, pod.metadata.name, "--tail=1").stdout
    assert tail == "done 1000\n"


def test_logs_follow_streams_while_the_container_runs(
    real_api: Any, node_namespace: str, real_kubectl: Any, probe_image: str
) -> None:
    core: Any = client.CoreV1Api(real_api)
    script = "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n    time.sleep(0.7)\n"
    core.create_namespaced_pod(node_namespace, probe_pod("ticker", probe_image, script))
    wait_for(
        lambda: core.read_namespaced_pod("ticker", node_namespace).status.phase in ("Running", "Succeeded"),
        timeout=60,
        what="ticker running",
    )
    started = time.monotonic()
    resp = core.read_namespaced_pod_log("ticker", node_namespace, follow=True, _preload_content=False)
    first_at: float | None = None
    text = ""
    for chunk in resp.stream(64):
        text += chunk.decode()
        if first_at is None and "tick" in text:
            first_at = time.monotonic() - started
    assert text.splitlines() == [f"tick {i}" for i in range(4)]
    assert first_at is not None and first_at < 2.0, "follow must stream, not wait for the end"
    follow = real_kubectl("logs", "-f", "-n", node_namespace, "ticker", "--timestamps").stdout
    assert len(follow.splitlines()) == 4 and follow.split()[0].endswith("Z")


def test_a_failed_container_keeps_its_exit_code_and_last_words(
    real_api: Any, node_namespace: str, probe_image: str
) -> None:
    body = probe_pod("crash", probe_image, "import sys; print('reason: OOM-ish'); sys.exit(3)")
    body["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pod = run_to_end(real_api, node_namespace, body)
    assert pod.status.phase == "Failed"
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (3, "Error")
    assert term.message.strip() == "reason: OOM-ish"


def _crictl(*args: str) -> str:
    proc = subprocess.run(crictl_command(*args), capture_output=True, text=True, check=True, timeout=30)
    return proc.stdout


def test_deleting_the_owner_garbage_collects_the_job_and_stops_its_container(
    real_api: Any, node_namespace: str, probe_image: str
) -> None:
    core: Any = client.CoreV1Api(real_api)
    batch: Any = client.BatchV1Api(real_api)
    ns = node_namespace
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    job = _job("sleeper", probe_image, "import time; time.sleep(300)")
    job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    job["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    ]
    batch.create_namespaced_job(ns, job)

    def running_container() -> str | None:
        for pod in _pods(core, ns, "sleeper"):
            for status in pod.status.container_statuses or []:
                if status.state.running and status.container_id:
                    return str(status.container_id).removeprefix("containerd://")
        return None

    container = wait_for(running_container, timeout=60, what="sleeper running")
    assert _crictl("ps", "-q", "--id", container).strip()  # running in containerd
    core.delete_namespaced_config_map("owner", ns, propagation_policy="Background")

    def job_gone() -> bool:
        try:
            batch.read_namespaced_job("sleeper", ns)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(job_gone, timeout=60, what="the Job garbage-collected")
    wait_for(lambda: not _pods(core, ns, "sleeper"), timeout=60, what="its pod garbage-collected")
    assert not _crictl("ps", "-q", "--id", container).strip(), "the container still runs"


def _failed_mounts(core: Any, namespace: str, pod: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [e.message for e in events if e.reason == "FailedMount" and e.type == "Warning"]


def _waiting_reason(core: Any, namespace: str, pod: str) -> str | None:
    """The first container's waiting reason, None until the kubelet has posted a container status."""
    statuses = core.read_namespaced_pod_status(pod, namespace).status.container_statuses
    waiting = statuses[0].state.waiting if statuses else None
    return waiting.reason if waiting is not None else None


def test_a_missing_directory_is_a_failed_mount_and_is_not_created(
    real_api: Any, node_namespace: str, probe_image: str, tmp_path: Path
) -> None:
    """What the operator relies on when it mounts every hostPath with type `Directory`: a typo leaves
    the pod in ContainerCreating with a FailedMount event naming the path, and nothing on the node."""
    core: Any = client.CoreV1Api(real_api)
    typo = tmp_path / "dgits"
    body = probe_pod("typo", probe_image, "import os; print(sorted(os.listdir('/data')))")
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data", "readOnly": True}]
    body["spec"]["volumes"] = [{"name": "data", "hostPath": {"path": str(typo), "type": "Directory"}}]
    core.create_namespaced_pod(node_namespace, body)

    messages = wait_for(
        lambda: _failed_mounts(core, node_namespace, "typo"), timeout=60, what="a FailedMount event"
    )
    expected = (
        f'MountVolume.SetUp failed for volume "data" : hostPath type check failed: {typo} is not a directory'
    )
    assert expected in messages
    # The kubelet's status manager posts the pod's status on its own schedule: the event can come first.
    waiting = wait_for(
        lambda: _waiting_reason(core, node_namespace, "typo"), timeout=60, what="the pod's container status"
    )
    assert waiting == "ContainerCreating"
    assert core.read_namespaced_pod_status("typo", node_namespace).status.phase == "Pending"
    assert not typo.exists(), "the kubelet created the folder a typo named"

    typo.mkdir()
    (typo / "cat.png").write_bytes(b"")
    wait_for(
        lambda: core.read_namespaced_pod_status("typo", node_namespace).status.phase == "Succeeded",
        timeout=120,
        what="the pod started once the folder exists (the kubelet retries the mount)",
    )
    assert client.CoreV1Api(real_api).read_namespaced_pod_log("typo", node_namespace) == "['cat.png']\n"
