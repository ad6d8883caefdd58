"""Up and down: the real node starts in seconds and its teardown leaves the host as it found it.

This module runs before the other real-node modules (file order) and starts a cluster of its own: the
node is a host-wide singleton, so the session's ``real_cluster`` must not be up yet. It is not: nothing
collected before ``tests/node/`` asks for it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.node.pods import probe_pod, run_to_end
from transferjob_testing.cluster import node as real_node
from transferjob_testing.cluster.real import RealCluster

pytestmark = [pytest.mark.timeout(600)]


def host_state() -> dict[str, Any]:
    """Everything a node changes on the host, as comparable values."""

    def lines(*args: str) -> list[str]:
        return subprocess.run(list(args), capture_output=True, text=True, check=False).stdout.splitlines()

    chains = sorted(
        f"{tool} {table} {line.split()[1]}"
        for tool in ("iptables", "ip6tables")
        for table in ("filter", "nat", "mangle")
        for line in lines(tool, "-w", "-t", table, "-S")
        if line.startswith("-N ")
    )
    return {
        "sysctls": {name: real_node._read_sysctl(name) for name in real_node.SYSCTLS},
        "links": sorted(line.split()[0].split("@")[0] for line in lines("ip", "-br", "link")),
        "nft tables": sorted(lines("nft", "list", "tables")),
        "iptables chains": chains,
        "kubepods cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")),
        "paths": {str(p): p.exists() for p in (*real_node.HOST_PATHS, real_node.RUN_DIR)},
        "processes": sorted(
            name
            for name in ("kubelet", "kube-proxy", "containerd-shim-runc-v2", "test-only-fake-gpu-plugin")
            if subprocess.run(["pgrep", "-f", name], capture_output=True, check=False).returncode == 0
        ),
    }


def test_up_runs_a_pod_and_down_restores_the_host(tmp_path: Path) -> None:
    before = host_state()
    started = time.monotonic()
    cluster = RealCluster(tmp_path / "cluster", gpus=2).start()
    try:
        up = time.monotonic() - started
        print(f"cluster up in {up:.1f}s (images cached or built before)")
        during = host_state()
        assert during["links"] != before["links"], "the bridge should exist while the node is up"
        namespace = "bringup"
        client.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": namespace}})
        pod = run_to_end(
            cluster.api,
            namespace,
            probe_pod("hello", cluster.images.operator.ref, "print('hello from the node')"),
        )
        assert pod.status.phase == "Succeeded"
    finally:
        cluster.stop()
    assert host_state() == before
