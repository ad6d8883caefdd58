"""Shared pytest fixtures, notably the real Kubernetes control plane for ``@pytest.mark.cluster`` tests.

Fixtures (scope):

* ``repo_root`` (session) -> ``Path`` of the repository.
* ``test_cluster`` (session) -> :class:`TestCluster`: a control plane started from the binaries
  (``make cluster-binaries`` / ``KUBEBUILDER_ASSETS``) in a temporary directory and stopped at the end,
  or the cluster of ``KUBECONFIG`` when ``TJ_TEST_USE_EXISTING_CLUSTER=1``.
* ``kubeconfig`` (session) -> ``Path`` of an admin kubeconfig for it.
* ``api_client`` (session) -> admin ``kubernetes.client.ApiClient``.
* ``namespace`` (function) -> name of a fresh namespace (its ``default`` ServiceAccount exists),
  deleted afterwards.
* ``apply_yaml`` (session) -> ``apply_yaml(path_or_yaml_text, namespace=None) -> list[dict]``
  (server-side apply).
* ``kubectl`` (session) -> ``kubectl(*args, check=True) -> CompletedProcess[str]`` with the kubeconfig set.
* ``real_cluster`` (session) -> :class:`RealCluster`: the control plane on the node bridge's address and
  the real node ``tj-node`` (4 TEST-ONLY fake ``nvidia.com/gpu``), our images built (cached) and
  imported (docs/real-node.md). Its teardown fails the run if the host is not as it was before.
* ``node_namespace`` (function) -> a fresh ``tj-test-*`` namespace of the real cluster, deleted afterwards
  with its static volumes.
* ``real_api`` (session) -> its admin ``ApiClient``; ``real_kubectl`` (session) -> kubectl of the
  cluster's version against it; ``probe_image`` (session) -> our operator image (Debian + python3,
  non-root), for pods that probe the node.

Environment: ``TJ_SKIP_CLUSTER=1`` skips cluster tests; otherwise missing binaries make them FAIL
with instructions. ``TJ_SKIP_NODE=1`` skips what needs the real node (root, containerd, our images);
otherwise what it lacks makes them fail. Tests under ``tests/cluster/`` get the ``cluster`` marker
automatically, so ``pytest -m "not cluster"`` deselects them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from transferjob_testing import parallel
from transferjob_testing.cluster.binaries import BinariesMissingError, find_binaries
from transferjob_testing.cluster.controlplane import ControlPlane, ControlPlaneError
from transferjob_testing.cluster.kube import apply_yaml as _apply_yaml
from transferjob_testing.cluster.kube import kubectl as _kubectl
from transferjob_testing.cluster.kube import temporary_namespace
from transferjob_testing.cluster.node import clear_leftovers, host_state, missing_prerequisites
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.cluster.volumes import delete_static_volumes
from transferjob_testing.images import build_images

_REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"


@dataclass(frozen=True)
class TestCluster:
    """What a test needs to reach the cluster."""

    __test__ = False  # not a test class, despite the name

    kubeconfig: Path
    server: str
    existing: bool
    root: Path


#: The `xdist_group` of every test that touches the host-wide real node or our images (`make test` runs
#: the suite on two pytest-xdist workers with `--dist loadgroup`): one worker runs them all, in order.
NODE_GROUP = "real-node"
#: Folders whose tests belong to that group whatever fixtures they ask for: the node's own tests (they
#: start and stop nodes, snapshot the host) and the image builds (buildah and containerd are host-wide).
NODE_DIRS = (Path(__file__).resolve().parent / "node", Path(__file__).resolve().parent / "images")


def uses_the_node(item: pytest.Item) -> bool:
    """Whether a test needs the real node (host-wide: one at a time, never beside another of its kind)."""
    path = Path(str(item.fspath))
    return (
        "real_cluster" in getattr(item, "fixturenames", ())
        or item.get_closest_marker("node") is not None
        or any(folder in path.parents for folder in NODE_DIRS)
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``cluster`` what needs the control plane: tests/cluster/ and any test using its fixtures.

    ``fixturenames`` is the transitive closure, so a test that only asks for ``namespace`` or a module
    fixture built on ``api_client`` is deselected by ``-m "not cluster"`` too.

    Each test also gets an ``xdist_group``: every module with a test on the real node goes to one group
    (one worker, in collection order, as in a serial run), every other module is a group of its own, so
    a module's fixtures (a trained model, an operator) are built once, on one worker. Without xdist the
    marks do nothing.
    """
    node_modules = {Path(str(item.fspath)) for item in items if uses_the_node(item)}
    groups = []
    for item in items:
        module = Path(str(item.fspath))
        uses_cluster = "test_cluster" in getattr(item, "fixturenames", ())
        if uses_cluster or CLUSTER_DIR in module.parents:
            item.add_marker(pytest.mark.cluster)
        group = NODE_GROUP if module in node_modules else module.relative_to(_REPO_ROOT).as_posix()
        item.add_marker(pytest.mark.xdist_group(group))
        groups.append((item.nodeid, group))
    if parallel.is_worker():
        # The node's group is the longest: first in the collection, so that with `--no-loadscope-reorder`
        # one worker starts it at once while the other takes every other module in turn.
        items.sort(key=lambda item: Path(str(item.fspath)) not in node_modules)
        parallel.record(groups)


def pytest_configure(config: pytest.Config) -> None:
    parallel.configure(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    parallel.unconfigure()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` that still groups under pytest 9.2 (`transferjob_testing.parallel`)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return parallel.make_scheduler(config, log)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return _REPO_ROOT


@pytest.fixture(scope="session")
def test_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    if os.environ.get("TJ_SKIP_CLUSTER") == "1":
        pytest.skip("TJ_SKIP_CLUSTER=1: cluster tests skipped on request")
    root = tmp_path_factory.mktemp("tj-cluster")
    if os.environ.get("TJ_TEST_USE_EXISTING_CLUSTER") == "1":
        kc = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")).split(os.pathsep)[0]
        kubeconfig = Path(kc).resolve()
        if not kubeconfig.is_file():
            pytest.fail(
                f"TJ_TEST_USE_EXISTING_CLUSTER=1 but kubeconfig {kubeconfig} does not exist", pytrace=False
            )
        from kubernetes import config

        server = str(config.new_client_from_config(config_file=str(kubeconfig)).configuration.host)
        yield TestCluster(kubeconfig, server, True, root)
        return
    problem = ""
    cp = ControlPlane(root / "cp")
    try:
        cp.binaries = find_binaries()
        cp.start()
    except BinariesMissingError as exc:
        problem = str(exc)
    except ControlPlaneError as exc:
        problem = f"test control plane did not start: {exc}"
    if problem:  # outside the except block: one clear message, no chained traceback
        pytest.fail(problem, pytrace=False)
    try:
        yield TestCluster(cp.kubeconfig, cp.server, False, root)
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kubeconfig(test_cluster: TestCluster) -> Path:
    return test_cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(test_cluster: TestCluster) -> Iterator[Any]:
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(test_cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture()
def namespace(api_client: Any) -> Iterator[str]:
    with temporary_namespace(api_client, "tj-test", {"transferjob.io/test": "true"}) as name:
        yield name


@pytest.fixture(scope="session")
def apply_yaml(api_client: Any) -> Callable[..., list[dict[str, Any]]]:
    def apply(source: Path | str, namespace: str | None = None) -> list[dict[str, Any]]:
        return _apply_yaml(api_client, source, namespace)

    return apply


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Callable[..., Any]:
    def run(*args: str, check: bool = True) -> Any:
        return _kubectl(kubeconfig, *args, check=check)

    return run


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    if os.environ.get("TJ_SKIP_NODE") == "1":
        pytest.skip("TJ_SKIP_NODE=1: real-node tests skipped on request")
    problems = missing_prerequisites()
    if problems:
        pytest.fail("the real node cannot start:\n  " + "\n  ".join(problems), pytrace=False)
    build_images()  # first: a build may touch the host's firewall, which the snapshot must not see
    if clear_leftovers():
        print("restored the host from a real node that a killed run left behind")
    before = host_state()
    cluster = RealCluster(tmp_path_factory.mktemp("real-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
    after = host_state()
    assert after == before, f"the real node's teardown left the host changed: {after} != {before}"


@pytest.fixture(scope="session")
def real_api(real_cluster: RealCluster) -> Any:
    return real_cluster.api


@pytest.fixture(scope="session")
def real_kubectl(real_cluster: RealCluster) -> Callable[..., Any]:
    def run(*args: str, check: bool = True) -> Any:
        return real_cluster.kubectl(*args, check=check)

    return run


@pytest.fixture(scope="session")
def probe_image(real_cluster: RealCluster) -> str:
    return str(real_cluster.images.operator.ref)


@pytest.fixture()
def node_namespace(real_api: Any) -> Iterator[str]:
    with temporary_namespace(real_api, "tj-test", {"transferjob.io/test": "true"}) as name:
        yield name
    delete_static_volumes(real_api, name)
