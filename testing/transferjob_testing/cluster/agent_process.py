"""Run the test node agent as a separate process, the most kubelet-like arrangement.

A separate process keeps pod processes and the agent's threads out of the pytest process (a hung
trainer cannot wedge the test runner) and lets ``make cluster-up`` leave an agent running for the demo.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from transferjob_testing.cluster.binaries import REPO_ROOT
from transferjob_testing.cluster.controlplane import die_with_parent, stop_pid, stop_process

AGENT_MODULE = "transferjob_testing.cluster.node_agent"


@dataclass
class AgentProcess:
    """A running ``python -m transferjob_testing.cluster.node_agent``; ``node_names``: the Nodes it serves."""

    proc: subprocess.Popen[bytes] | None
    pid: int
    node_names: list[str]
    log: Path

    def stop(self) -> None:
        """SIGTERM: the agent kills its pod processes, then exits; SIGKILL after 20 s."""
        if self.proc is not None:
            stop_process(self.proc, grace=20)
        else:
            stop_pid(self.pid, AGENT_MODULE, grace=20)

    def wait_ready(self, kubeconfig: Path, timeout: float = 30.0) -> None:
        """Until every node is Ready, untainted and schedulable (the scheduler sees it)."""
        api = config.new_client_from_config(config_file=str(kubeconfig))
        core = client.CoreV1Api(api)
        deadline = time.monotonic() + timeout
        pending = set(self.node_names)
        while pending and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node agent exited with {self.proc.returncode}; see {self.log}")
            for name in list(pending):
                try:
                    node = core.read_node(name)
                except client.ApiException:
                    continue
                conditions = (node.status.conditions if node.status else None) or []
                ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
                if ready and not (node.spec and node.spec.taints):
                    pending.discard(name)
            time.sleep(0.2)
        api.close()
        if pending:
            raise RuntimeError(f"nodes {sorted(pending)} not Ready after {timeout}s; see {self.log}")


def start_agent(
    kubeconfig: Path,
    root: Path,
    pki_dir: Path | None,
    nodes: int = 1,
    gpus: int = 0,
    cpu: str = "8",
    memory: str = "32Gi",
    node_prefix: str = "tj-node",
    detach: bool = False,
    extra_args: list[str] | None = None,
) -> AgentProcess:
    """Start the agent; with ``pki_dir`` it serves logs over TLS with the control plane's certificates."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "node-agent.log"
    args = [
        sys.executable,
        "-m",
        AGENT_MODULE,
        "--kubeconfig",
        str(kubeconfig),
        "--root",
        str(root),
        "--nodes",
        str(nodes),
        "--gpus",
        str(gpus),
        "--cpu",
        cpu,
        "--memory",
        memory,
        "--node-prefix",
        node_prefix,
        *(extra_args or []),
    ]
    if pki_dir is not None:
        args += [
            "--tls-cert",
            str(pki_dir / "kubelet.crt"),
            "--tls-key",
            str(pki_dir / "kubelet.key"),
            "--client-ca",
            str(pki_dir / "ca.crt"),
        ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
            preexec_fn=None if detach else die_with_parent,
        )
    names = [f"{node_prefix}-{i}" for i in range(nodes)]
    (root / "agent.json").write_text(json.dumps({"pid": proc.pid, "nodes": names}))
    return AgentProcess(proc=proc, pid=proc.pid, node_names=names, log=log)


def agent_from_state(root: Path) -> AgentProcess | None:
    """The agent a previous ``make cluster-up`` left running, if any."""
    state = root / "agent.json"
    if not state.exists():
        return None
    data = json.loads(state.read_text())
    return AgentProcess(
        proc=None, pid=int(data["pid"]), node_names=list(data["nodes"]), log=root / "node-agent.log"
    )
