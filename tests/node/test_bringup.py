"""Up and down: the real node starts in seconds and its teardown leaves the host as it found it.

This module starts a cluster of its own. The node is a host-wide singleton, so the session's
``real_cluster`` must not be up yet: in a full run nothing collected before ``tests/node/`` asks for it
(and ``real_cluster``'s own teardown checks the host the same way, whatever the order).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.node.pods import probe_pod, run_to_end
from transferjob_testing.cluster.node import STATE_FILE, clear_leftovers, host_state, running_node
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.images import build_images

pytestmark = [pytest.mark.timeout(600)]


def test_up_runs_a_pod_and_down_restores_the_host(tmp_path: Path) -> None:
    owner = running_node()
    if owner:
        pytest.fail(f"a real node is already up ({owner}): run this module before other real-node users")
    build_images()
    # A reused machine may hold what a killed run's node left (CI once did: bridge, chains, sysctls);
    # the snapshot is of the host as it was before any node, which is what a teardown must restore.
    if clear_leftovers():
        print("restored the host from a real node that a killed run left behind")
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


def test_what_a_killed_run_left_is_cleared_before_the_next_snapshot(tmp_path: Path) -> None:
    """A run killed with its node up (a CI timeout) leaves the host changed but no process to stop.

    CI once met exactly that on a reused machine: the next run's snapshot recorded the dead node's bridge
    and chains as the host's own. `clear_leftovers` restores such a host from the state file alone.
    """
    if running_node():
        pytest.fail("a real node is already up: run this module before other real-node users")
    clear_leftovers()
    before = host_state()
    cluster = RealCluster(tmp_path / "cluster", gpus=1).start()
    try:
        namespace = "killed"
        client.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": namespace}})
        run_to_end(cluster.api, namespace, probe_pod("left", cluster.images.operator.ref, "print('left')"))
        # What SIGKILL of the whole run leaves: every node process gone, nothing restored.
        state = json.loads(STATE_FILE.read_text())
        for p in state["pids"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while running_node() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running_node(), "the node's processes should be gone"
        left = host_state()
        assert left["links"] != before["links"] and left["sysctls"] != before["sysctls"], left
        assert clear_leftovers(), "the state file should have named what to restore"
        assert not clear_leftovers(), "a second call has nothing left to do"
        assert host_state() == before
    finally:
        cluster.stop()
    assert host_state() == before


def test_cgroups_a_dead_node_left_with_a_process_in_them_are_cleared() -> None:
    """No state file, but ``/kubepods`` cgroups with a pod process still in them: what a node leaves when
    its pods outlive containerd and the shims (a killed shim's container is re-parented, not killed).

    CI once took such a host's snapshot as "before"; the next teardown then removed the cgroups and
    the host looked changed. `clear_leftovers` kills what is in them and removes them.
    """
    if running_node():
        pytest.fail("a real node is already up: run this module before other real-node users")
    clear_leftovers()
    before = host_state()
    assert before["kubepods cgroups"] == []
    controller = Path("/sys/fs/cgroup/pids")
    if not controller.is_dir():
        pytest.skip("needs the cgroup v1 pids controller (the layout of this machine and CI's)")
    pod = controller / "kubepods" / "besteffort" / "podleft"
    pod.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "600"])
    try:
        (pod / "cgroup.procs").write_text(str(orphan.pid))
        assert not STATE_FILE.exists()
        assert host_state()["kubepods cgroups"] == [str(controller / "kubepods")]
        assert clear_leftovers(), "the stale cgroups should count as something restored"
        assert orphan.wait(timeout=10) == -signal.SIGKILL, "the process inside should have been killed"
        assert host_state() == before
        assert not clear_leftovers(), "a second call has nothing left to do"
    finally:
        orphan.kill()
        orphan.wait()
        for d in (pod, pod.parent, pod.parent.parent):
            with contextlib.suppress(OSError):
                d.rmdir()
