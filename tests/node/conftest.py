"""The real node: a single-node cluster whose kubelet runs our own images in containerd.

Fixtures (scope):
* ``real_cluster`` (package) -> :class:`RealCluster`: the control plane on the bridge address and the
  real node ``tj-node`` (4 TEST-ONLY fake ``nvidia.com/gpu``), our images built (cached) and imported.
  Stopped after the last test of this folder (its processes would only load the machine for the
  tests after it), which restores the host.
* ``real_api`` (package) -> its admin ``ApiClient``.
* ``real_namespace`` (function) -> a fresh namespace enforcing Pod Security "restricted", deleted
  afterwards with its static volumes.
* ``probe_image`` (package) -> our operator image (Debian + python3, non-root), for pods that probe
  the node.

The node needs root, Debian's containerd/runc/CNI plugins/nftables and the node binaries: ``make test``
installs them (``make node-prereqs``). Without them these tests fail with what is missing, they are not
skipped; ``TJ_SKIP_NODE=1`` skips them on request (a machine where we are not root).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from transferjob_testing.cluster.kube import temporary_namespace
from transferjob_testing.cluster.node import missing_prerequisites
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.cluster.volumes import delete_static_volumes

NODE_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if NODE_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.node)


@pytest.fixture(scope="package")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    if os.environ.get("TJ_SKIP_NODE") == "1":
        pytest.skip("TJ_SKIP_NODE=1: real-node tests skipped on request")
    problems = missing_prerequisites()
    if problems:
        pytest.fail("the real node cannot start:\n  " + "\n  ".join(problems), pytrace=False)
    cluster = RealCluster(tmp_path_factory.mktemp("real-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="package")
def real_api(real_cluster: RealCluster) -> Any:
    return real_cluster.api


@pytest.fixture()
def real_namespace(real_api: Any) -> Iterator[str]:
    labels = {"transferjob.io/test": "true", "pod-security.kubernetes.io/enforce": "restricted"}
    with temporary_namespace(real_api, "tj-node", labels) as name:
        yield name
    delete_static_volumes(real_api, name)


@pytest.fixture(scope="package")
def probe_image(real_cluster: RealCluster) -> str:
    return str(real_cluster.images.operator.ref)
