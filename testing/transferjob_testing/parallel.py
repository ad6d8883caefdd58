"""`make test` on two pytest-xdist workers: the real node's tests on one, in order; the rest beside them.

The real node is host-wide (one kubelet, one bridge, one containerd for our images), so every test that
uses it, starts one or builds our images must run on one worker, one after the other, as in a serial
run. `tests/conftest.py` gives each test an `xdist_group` (those all share one; every other module is a
group of its own, so its module fixtures are built once) and `make test` passes `--dist loadgroup`.

pytest-xdist 3.8 groups by appending `@<group>` to each test's node id in the worker (`item._nodeid`).
pytest 9.2 computes `nodeid` from another attribute, so the suffix is silently lost and every test
becomes its own unit: here the node's bring-up test ran on one worker while the session's node started
on the other, and both failed. So the grouping does not rely on it: each worker writes the group of every
test it collected to a file the controller named (in an environment variable the workers inherit), and
the controller's scheduler takes a test's unit from that file once every worker has collected. With a
pytest where the suffix survives, the suffix is used, and the file agrees with it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: The file (prefix) the workers write their groups to; set by the controller before they start.
GROUPS_ENV = "TJ_XDIST_GROUPS"


def is_worker() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def configure(config: Any) -> None:
    """In the controller of a distributed run: name the file the workers will write their groups to."""
    if is_worker() or getattr(config.option, "dist", "no") == "no":
        return
    os.environ[GROUPS_ENV] = str(Path(tempfile.mkdtemp(prefix="tj-xdist-")) / "groups")


def unconfigure() -> None:
    """In the controller, at the end: remove the workers' files."""
    prefix = os.environ.get(GROUPS_ENV)
    if prefix and not is_worker():
        shutil.rmtree(Path(prefix).parent, ignore_errors=True)


def record(groups: Iterable[tuple[str, str]]) -> None:
    """In a worker: write `(node id, group)` of each collected test where the controller will read it."""
    prefix = os.environ.get(GROUPS_ENV)
    if not prefix or not is_worker():
        return
    target = Path(f"{prefix}.{os.environ['PYTEST_XDIST_WORKER']}.json")
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(dict(groups)))
    partial.replace(target)  # the controller never reads half a file


def read_groups() -> dict[str, str]:
    """In the controller: the groups one worker wrote (every worker collected the same tests)."""
    prefix = os.environ.get(GROUPS_ENV)
    if not prefix:
        return {}
    written = sorted(Path(prefix).parent.glob(f"{Path(prefix).name}.*.json"))
    return dict(json.loads(written[0].read_text())) if written else {}


def make_scheduler(config: Any, log: Any) -> Any:
    """`--dist loadgroup`, with each test's unit from the workers' file when its node id has no group."""
    from xdist.scheduler import LoadGroupScheduling

    class FileGroupScheduling(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return str(super()._split_scope(nodeid))
            if self.groups is None:  # first called once every worker has collected
                self.groups = read_groups()
            return self.groups.get(nodeid, nodeid)

    return FileGroupScheduling(config, log)
