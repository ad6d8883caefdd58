"""Up and down: the real node starts in seconds and its teardown leaves the host as it found it.

This module starts a cluster of its own. The node is a host-wide singleton, so the session's
``real_cluster`` must not be up yet: in a full run nothing collected before ``tests/node/`` asks for it
(and ``real_cluster``'s own teardown checks the host the same way, whatever the order).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.node.pods import probe_pod, run_to_end
from transferjob_testing.cluster.node import host_state, running_node
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.images import build_images

pytestmark = [pytest.mark.timeout(600)]


def test_up_runs_a_pod_and_down_restores_the_host(tmp_path: Path) -> None:
    owner = running_node()
    if owner:
        pytest.fail(f"a real node is already up ({owner}): run this module before other real-node users")
    build_images()
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
