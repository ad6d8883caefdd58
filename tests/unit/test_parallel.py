"""The grouping `make test` relies on to keep the real node's tests on one pytest-xdist worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferjob_testing import parallel


def test_the_scheduler_takes_each_tests_unit_from_the_workers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    """pytest 9.2 drops xdist's `@group` node-id suffix; without this file every test was its own unit
    and the node's bring-up ran beside the session's node (both failed)."""
    monkeypatch.setenv(parallel.GROUPS_ENV, str(tmp_path / "groups"))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    parallel.record(
        [("tests/node/test_a.py::t", "real-node"), ("tests/unit/test_b.py::t", "tests/unit/test_b.py")]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["groups.gw1.json"]  # no partial file left
    monkeypatch.delenv("PYTEST_XDIST_WORKER")

    monkeypatch.setattr(pytestconfig.option, "tx", ["2*popen"])  # as `-n 2` sets it
    scheduler = parallel.make_scheduler(pytestconfig, None)
    assert scheduler._split_scope("tests/node/test_a.py::t") == "real-node"
    assert scheduler._split_scope("tests/unit/test_b.py::t") == "tests/unit/test_b.py"
    assert scheduler._split_scope("tests/x.py::unknown") == "tests/x.py::unknown"  # its own unit
    # Where xdist's suffix survives (older pytest), it decides.
    assert scheduler._split_scope("tests/node/test_c.py::t[1]@real-node") == "real-node"


def test_outside_a_distributed_run_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(parallel.GROUPS_ENV, str(tmp_path / "groups"))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    parallel.record([("tests/node/test_a.py::t", "real-node")])
    assert list(tmp_path.iterdir()) == []
    assert parallel.read_groups() == {}
