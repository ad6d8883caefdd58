"""``python -m transferjob_testing.cluster up|down|status``: the control plane of ``make cluster-up``.

``up`` leaves etcd, kube-apiserver, kube-controller-manager, kube-scheduler and one node agent running
in the background (their own sessions), writes the admin kubeconfig to ``<root>/kubeconfig`` and prints
how to use it. ``down`` stops them using the pids recorded under ``<root>``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from transferjob_testing.cluster.agent_process import agent_from_state, start_agent
from transferjob_testing.cluster.binaries import REPO_ROOT, BinariesMissingError
from transferjob_testing.cluster.controlplane import ControlPlane, _http_ok

DEFAULT_ROOT = REPO_ROOT / ".local" / "cluster"


def _running(root: Path) -> bool:
    state = root / "state.json"
    if not state.exists():
        return False
    saved = json.loads(state.read_text())
    cp = ControlPlane(root, address=saved.get("address", "127.0.0.1"))
    cp.ports = saved["ports"]
    try:
        return _http_ok(f"{cp.server}/readyz", cp._admin_ssl())
    except OSError:
        return False


def up(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    if _running(root):
        print(f"control plane already running; kubeconfig: {root / 'kubeconfig'}")
        return 0
    down(args, quiet=True)
    if root.exists():
        shutil.rmtree(root)
    t0 = time.monotonic()
    try:
        cp = ControlPlane(root, detach=True).start()
    except BinariesMissingError as exc:
        print(exc, file=sys.stderr)
        return 2
    t1 = time.monotonic()
    agent = start_agent(
        cp.kubeconfig, root / "node-agent", cp.pki.dir, nodes=args.nodes, gpus=args.gpus, detach=True
    )
    agent.wait_ready(cp.kubeconfig)
    t2 = time.monotonic()
    print(
        f"control plane ready in {t1 - t0:.1f}s, node agent ({', '.join(agent.node_names)}) "
        f"ready {t2 - t1:.1f}s later"
    )
    print(f"API server: {cp.server}")
    print(f"kubeconfig: {cp.kubeconfig}")
    print(f"  export KUBECONFIG={cp.kubeconfig}")
    print(f"  kubectl --kubeconfig {cp.kubeconfig} get nodes")
    print(f"logs: {root / 'logs'} and {root / 'node-agent' / 'node-agent.log'}")
    return 0


def down(args: argparse.Namespace, quiet: bool = False) -> int:
    root: Path = args.root.resolve()
    agent = agent_from_state(root / "node-agent")
    if agent is not None:
        agent.stop()
        (root / "node-agent" / "agent.json").unlink(missing_ok=True)
    stopped = ControlPlane.stop_from_state(root)
    if not quiet:
        print("control plane stopped" if stopped else "no control plane was running")
    return 0


def status(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    ok = _running(root)
    print(f"running; kubeconfig: {root / 'kubeconfig'}" if ok else "not running")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transferjob_testing.cluster")
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus", type=int, default=1, help="nvidia.com/gpu per node")
    args = p.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
