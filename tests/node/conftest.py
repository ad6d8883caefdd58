"""The real node's tests (tests/node/): marked ``node``; the cluster fixtures are in tests/conftest.py.

* ``real_namespace`` (function) -> a fresh namespace of the real cluster enforcing Pod Security
  "restricted", deleted afterwards with its static volumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from transferjob_testing.cluster.kube import temporary_namespace
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
