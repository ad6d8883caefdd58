"""A control plane plus node agent of one's own, for tests that break things on purpose.

Fault tests kill the operator, restart the API server and delete pods: on the session cluster of
``tests/conftest.py`` that would disturb every other test (and an operator started there would compete
with the session one for the same TransferJobs). `PrivateCluster` starts a separate control plane and
agent; `shared_private_cluster` hands one instance to every module of a test run that asks for it
(reference counted), so that several fault/privilege modules pay the ~20 s start-up once.
The benchmark (`bench/operator.py`) uses the same class.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from transferjob_testing.cluster.agent_process import AgentProcess, start_agent
from transferjob_testing.cluster.controlplane import ControlPlane


@dataclass
class PrivateCluster:
    """A running control plane (``cp``) and node agent (``agent``) under ``root``."""

    root: Path
    nodes: int = 2
    gpus: int = 2
    agent_args: tuple[str, ...] = ("--restart-backoff", "0.5")
    cp: ControlPlane | None = None
    agent: AgentProcess | None = None
    _api: Any = field(default=None, repr=False)

    @property
    def control_plane(self) -> ControlPlane:
        assert self.cp is not None, "not started"
        return self.cp

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def api(self) -> client.ApiClient:
        """An admin API client (created on first use)."""
        if self._api is None:
            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def start(self, with_agent: bool = True) -> PrivateCluster:
        self.cp = ControlPlane(self.root / "cp").start()
        if with_agent:
            self.agent = start_agent(
                self.cp.kubeconfig,
                self.root / "node-agent",
                self.cp.pki.dir,
                nodes=self.nodes,
                gpus=self.gpus,
                cpu="8",
                memory="32Gi",
                node_prefix="tj-private-node",
                extra_args=list(self.agent_args),
            )
            try:
                self.agent.wait_ready(self.cp.kubeconfig, timeout=60)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Agent first (it kills its pod processes), then the control plane."""
        if self._api is not None:
            self._api.close()
            self._api = None
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        if self.cp is not None:
            self.cp.stop()
            self.cp = None


_lock = threading.Lock()
_shared: PrivateCluster | None = None
_users = 0


def shared_private_cluster(root: Path) -> PrivateCluster:
    """The process-wide private cluster, started on first use; pair every call with `release`."""
    global _shared, _users
    with _lock:
        if _shared is None:
            _shared = PrivateCluster(root).start()
        _users += 1
        return _shared


def release_private_cluster() -> None:
    """Stop the shared private cluster when its last user is done."""
    global _shared, _users
    with _lock:
        _users -= 1
        if _users <= 0 and _shared is not None:
            _shared.stop()
            _shared = None
            _users = 0
