"""The real node's tests (tests/node/): marked ``node``; the cluster fixtures are in tests/conftest.py.

* ``real_namespace`` (function) -> a fresh namespace of the real cluster enforcing Pod Security
  "restricted", deleted afterwards with its static volumes.
* ``in_cluster_operator`` (package) -> the real cluster with the operator installed from
  ``hack/local-images``, removed after the last module of tests/node.
* ``quickstart_datasets`` (package) -> the quickstart's `datasets` folder (digits and source model).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from transferjob_testing.cluster import quickstart
from transferjob_testing.cluster.kube import temporary_namespace, wait_for
from transferjob_testing.cluster.real import OPERATOR_NAMESPACE, RealCluster, install_operator, operator_pods
from transferjob_testing.cluster.volumes import delete_static_volumes

NODE_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if NODE_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.node)


@pytest.fixture()
def real_namespace(real_api: Any) -> Iterator[str]:
    labels = {"transferjob.io/test": "true", "pod-security.kubernetes.io/enforce": "restricted"}
    with temporary_namespace(real_api, "tj-node", labels) as name:
        yield name
    delete_static_volumes(real_api, name)


@pytest.fixture(scope="package")
def in_cluster_operator(real_cluster: RealCluster) -> Iterator[RealCluster]:
    """The operator installed as the README says (`kubectl apply -k hack/local-images`), for the
    modules of tests/node; removed after them, since its replicas serve every namespace and the
    operator tests (tests/operator/) run operators of their own on the same cluster."""
    install_operator(real_cluster)
    yield real_cluster
    real_cluster.kubectl("-n", OPERATOR_NAMESPACE, "delete", "deployment", "transferjob-operator", "--wait")
    wait_for(lambda: not operator_pods(real_cluster), timeout=60, what="the operator pods to go")


@pytest.fixture(scope="package")
def quickstart_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart's `datasets` folder (digits 5-9 and the source model), made once for tests/node."""
    return quickstart.write_datasets(tmp_path_factory.mktemp("quickstart"))
