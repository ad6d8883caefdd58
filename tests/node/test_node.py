"""The real node itself: the kubelet's identity, GPUs through the device-plugin API, the fenced pod
network, and failures only a container runtime produces (OOMKilled, an image that is not there)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.node.pods import logs, probe_pod, run_to_end, wait_pod_condition
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.node import BRIDGE, NFT_TABLE, NODE_IP, NODE_NAME
from transferjob_testing.cluster.real import RealCluster

pytestmark = [pytest.mark.timeout(300)]


def test_node_is_ready_with_the_kubelet_and_runtime_we_built(
    real_cluster: RealCluster, real_api: Any
) -> None:
    node = client.CoreV1Api(real_api).read_node(NODE_NAME)
    info = node.status.node_info
    assert info.kubelet_version == "v1.35.4"
    assert info.container_runtime_version.startswith("containerd://1.")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == NODE_IP
    # The TEST-ONLY plugin's devices, counted by the kubelet itself.
    assert node.status.capacity["nvidia.com/gpu"] == str(real_cluster.gpus)
    assert node.status.allocatable["nvidia.com/gpu"] == str(real_cluster.gpus)


def test_kubelet_has_the_node_authorizers_credentials_not_admin(
    real_cluster: RealCluster, real_api: Any
) -> None:
    """The kubelet registers as system:node:tj-node: it may write its own Node, not another one's."""
    kubeconfig = real_cluster.root / "node" / "kubelet.kubeconfig"
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["name"]
    assert user == f"system:node:{NODE_NAME}"
    admin = client.CoreV1Api(real_api)
    other = "tj-node-authorizer-probe"
    admin.create_node({"metadata": {"name": other}})
    kubelet_api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        as_kubelet = client.CoreV1Api(kubelet_api)
        as_kubelet.patch_node(NODE_NAME, {"metadata": {"labels": {"transferjob.io/probe": "own"}}})
        with pytest.raises(client.ApiException) as denied:
            as_kubelet.patch_node(other, {"metadata": {"labels": {"transferjob.io/probe": "other"}}})
        assert denied.value.status == 403
        with pytest.raises(client.ApiException) as secrets:
            as_kubelet.list_secret_for_all_namespaces()
        assert secrets.value.status == 403
    finally:
        kubelet_api.close()
        admin.delete_node(other)
        admin.patch_node(NODE_NAME, {"metadata": {"labels": {"transferjob.io/probe": None}}})


def test_gpu_pods_are_admitted_by_the_kubelet_and_an_over_request_stays_pending(
    real_cluster: RealCluster, real_api: Any, real_namespace: str, probe_image: str
) -> None:
    script = (
        "import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'], os.environ['TRANSFERJOB_TEST_ONLY_FAKE_GPU'])"
    )
    pod = run_to_end(
        real_api, real_namespace, probe_pod("one-gpu", probe_image, script, {"nvidia.com/gpu": "1"})
    )
    assert pod.status.phase == "Succeeded", pod.status
    devices, marker = logs(real_api, real_namespace, "one-gpu").split()
    assert devices.startswith("test-only-fake-gpu-") and marker == "1"

    too_many = str(real_cluster.gpus + 1)
    core: Any = client.CoreV1Api(real_api)
    core.create_namespaced_pod(
        real_namespace, probe_pod("too-many", probe_image, "pass", {"nvidia.com/gpu": too_many})
    )
    cond = wait_pod_condition(real_api, real_namespace, "too-many", "PodScheduled", "False")
    assert cond.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond.message


def test_oom_killed_under_a_memory_limit(real_api: Any, real_namespace: str, probe_image: str) -> None:
    script = "blocks = [bytearray(16 << 20) for _ in range(64)]; print('survived')"
    pod = run_to_end(
        real_api, real_namespace, probe_pod("hog", probe_image, script, {"memory": "64Mi", "cpu": "250m"})
    )
    state = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed"
    assert (state.reason, state.exit_code) == ("OOMKilled", 137)


def test_an_image_that_is_not_on_the_node_is_never_pulled(real_api: Any, real_namespace: str) -> None:
    core: Any = client.CoreV1Api(real_api)
    core.create_namespaced_pod(
        real_namespace, probe_pod("missing", "localhost/transferjob/does-not-exist:1", "pass")
    )

    def waiting_reason() -> str | None:
        pod = core.read_namespaced_pod("missing", real_namespace)
        for status in pod.status.container_statuses or []:
            if status.state.waiting is not None and status.state.waiting.reason != "ContainerCreating":
                return str(status.state.waiting.reason)
        return None

    assert (
        wait_for(waiting_reason, timeout=60, what="the kubelet to give up on the image")
        == "ErrImageNeverPull"
    )


def test_restricted_profile_is_enforced_by_runc(real_api: Any, real_namespace: str, probe_image: str) -> None:
    """runAsNonRoot, a read-only root filesystem and no capabilities hold inside the container."""
    script = (
        "import os, json\n"
        "try:\n    open('/probe', 'w'); ro = False\nexcept OSError:\n    ro = True\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
        "print(json.dumps({'uid': os.getuid(), 'read_only_root': ro, 'cap_eff': caps}))"
    )
    pod = run_to_end(real_api, real_namespace, probe_pod("restricted", probe_image, script))
    assert pod.status.phase == "Succeeded", pod.status
    seen = json.loads(logs(real_api, real_namespace, "restricted"))
    assert seen == {"uid": 1000, "read_only_root": True, "cap_eff": "0000000000000000"}


# --------------------------------------------------------------------------------------------- network
def _host_addresses() -> list[str]:
    """This machine's IPv4 addresses outside loopback and the pod bridge."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        device, address = parts[1], parts[3].split("/")[0]
        if device not in ("lo", BRIDGE):
            found.append(address)
    return found


def _drop_counters() -> int:
    listing = subprocess.run(
        ["nft", "list", "table", "inet", NFT_TABLE], capture_output=True, text=True, check=True
    ).stdout
    total = 0
    for line in listing.splitlines():
        if "drop" in line and "packets" in line:
            words = line.split()
            total += int(words[words.index("packets") + 1])
    return total


@pytest.fixture()
def host_listener() -> Iterator[int]:
    """A TCP server on every host address: what a pod may reach (the bridge's) and what it may not."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    server.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        server.close()


PROBE = """
import json, os, socket, sys
results = {}
for name, host, port in json.loads(sys.argv[1] if len(sys.argv) > 1 else os.environ['TARGETS']):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        results[name] = 'connected'
    except socket.timeout:
        results[name] = 'timeout'
    except OSError as e:
        results[name] = 'error ' + str(e.errno)
    finally:
        s.close()
print(json.dumps(results))
"""


def test_pods_reach_the_api_server_and_nothing_outside_the_bridge(
    real_api: Any, real_namespace: str, probe_image: str, host_listener: int
) -> None:
    targets = [
        ["bridge address", NODE_IP, host_listener],
        ["kubernetes service", "10.0.0.1", 443],
        # TEST-NET-1 (RFC 5737): never routed anywhere; our forward chain must drop it before it leaves.
        ["outside address", "192.0.2.1", 80],
    ]
    targets += [[f"host address {a}", a, host_listener] for a in _host_addresses()]
    body = probe_pod("net", probe_image, PROBE)
    body["spec"]["containers"][0]["env"] = [{"name": "TARGETS", "value": json.dumps(targets)}]
    before = _drop_counters()
    pod = run_to_end(real_api, real_namespace, body, timeout=120)
    assert pod.status.phase == "Succeeded", logs(real_api, real_namespace, "net")
    results = json.loads(logs(real_api, real_namespace, "net"))
    assert results.pop("bridge address") == "connected"
    assert results.pop("kubernetes service") == "connected"
    assert results and all(outcome == "timeout" for outcome in results.values()), results
    assert _drop_counters() > before, "the drops were not our nftables rules'"


def test_a_pod_calls_the_api_server_with_its_projected_token(
    real_api: Any, real_namespace: str, probe_image: str
) -> None:
    script = (
        "import json, os, ssl, urllib.request\n"
        "d = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
        "ctx = ssl.create_default_context(cafile=d + 'ca.crt')\n"
        "host = os.environ['KUBERNETES_SERVICE_HOST'] + ':' + os.environ['KUBERNETES_SERVICE_PORT']\n"
        "auth = {'Authorization': 'Bearer ' + open(d + 'token').read()}\n"
        "req = urllib.request.Request('https://' + host + '/api', headers=auth)\n"
        "print(json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read())['kind'])"
    )
    pod = run_to_end(real_api, real_namespace, probe_pod("token", probe_image, script, token=True))
    assert pod.status.phase == "Succeeded", logs(real_api, real_namespace, "token")
    assert logs(real_api, real_namespace, "token").strip() == "APIVersions"


DNS_PROBE = """
import json, socket, time
results = {}
deadline = time.monotonic() + 60
while True:  # the peer's EndpointSlice may reach CoreDNS a moment after the pod runs
    try:
        results["peer"] = socket.gethostbyname("w-0.workers")
        break
    except OSError as e:
        if time.monotonic() > deadline:
            results["peer"] = "error " + str(e)
            break
        time.sleep(0.5)
results["kubernetes"] = socket.gethostbyname("kubernetes.default")
started = time.monotonic()
try:
    results["outside"] = socket.gethostbyname("pypi.org")
except OSError as e:
    results["outside"] = "error"
results["outsideSeconds"] = time.monotonic() - started
print(json.dumps(results))
"""


def test_pods_resolve_services_and_stable_hostnames_but_nothing_outside(
    real_api: Any, real_namespace: str, probe_image: str
) -> None:
    """The cluster DNS answers what an Indexed Job's workers need (`<hostname>.<headless service>`) and
    the `kubernetes` Service, and refuses every other name at once rather than letting it time out."""
    core: Any = client.CoreV1Api(real_api)
    core.create_namespaced_service(
        real_namespace,
        {
            "metadata": {"name": "workers"},
            "spec": {"clusterIP": "None", "selector": {"app": "peer"}, "publishNotReadyAddresses": True},
        },
    )
    peer = probe_pod("peer", probe_image, "import time; time.sleep(600)")
    peer["metadata"]["labels"] = {"app": "peer"}
    peer["spec"].update({"hostname": "w-0", "subdomain": "workers"})
    core.create_namespaced_pod(real_namespace, peer)
    peer_ip = wait_for(
        lambda: core.read_namespaced_pod("peer", real_namespace).status.pod_ip,
        timeout=120,
        interval=0.3,
        what="the peer pod's address",
    )
    pod = run_to_end(real_api, real_namespace, probe_pod("dns", probe_image, DNS_PROBE), timeout=120)
    assert pod.status.phase == "Succeeded", logs(real_api, real_namespace, "dns")
    results = json.loads(logs(real_api, real_namespace, "dns"))
    assert results["peer"] == peer_ip
    assert results["kubernetes"] == "10.0.0.1"
    assert results["outside"] == "error"
    assert results["outsideSeconds"] < 5, results
