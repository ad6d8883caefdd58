"""``python -m transferjob_testing.cluster up|down|status``: the cluster of ``make cluster-up``.

``up`` leaves a real single-node cluster running in the background (`real.RealCluster`: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, containerd, the kubelet, kube-proxy and the
TEST-ONLY fake GPU plugin, with our images imported), writes the admin kubeconfig to
``<root>/kubeconfig`` and, unless ``--bare``, makes it the README's quickstart cluster
(`transferjob_testing.cluster.quickstart`): the operator installed from ``hack/local-images``, the claims
``datasets`` (digits and a pretrained source model) and ``models`` in the default namespace, and
``<root>/env`` to source. ``down`` stops it and restores the host.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from transferjob_testing.cluster import quickstart
from transferjob_testing.cluster.binaries import REPO_ROOT
from transferjob_testing.cluster.controlplane import ControlPlane, _http_ok
from transferjob_testing.cluster.node import (
    NODE_NAME,
    missing_prerequisites,
    running_node,
    teardown_from_state,
)
from transferjob_testing.cluster.real import RealCluster, install_operator, kubectl_binary

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
    if _running(root / "cp"):
        print(f"cluster already running; kubeconfig: {root / 'kubeconfig'}")
        return 0
    owner = running_node()
    if owner:
        print(f"a real node is already up on this machine ({owner}); stop it first", file=sys.stderr)
        return 1
    down(args, quiet=True)
    # A fresh cluster, except the quickstart's data and source model (a minute to make, never written
    # by a job); `models` goes with the rest: its runs belonged to the old cluster's TransferJobs.
    keep = root / "volumes" / "datasets"
    for entry in root.glob("*") if root.exists() else []:
        if entry == keep.parent:
            for inner in entry.glob("*"):
                if inner != keep:
                    _remove(inner)
        else:
            _remove(entry)
    return _up_real(root, args)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _up_real(root: Path, args: argparse.Namespace) -> int:
    problems = missing_prerequisites()
    if problems:
        print("cannot start a real node:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("(make cluster-up installs them)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    cluster = RealCluster(root, gpus=args.gpus, detach=True).start()
    t1 = time.monotonic()
    kubeconfig = root / "kubeconfig"
    kubeconfig.unlink(missing_ok=True)
    kubeconfig.symlink_to(cluster.kubeconfig)
    print(f"real node {NODE_NAME} Ready in {t1 - t0:.1f}s (images built and imported included)")
    if not args.bare:
        install_operator(cluster)
        t2 = time.monotonic()
        print(f"operator installed from hack/local-images in {t2 - t1:.1f}s")
        print("writing the digits and pretraining the source model on digits 0-4 (about a minute)")
        datasets, models = quickstart.write_volumes(root / "volumes")
        quickstart.provision(cluster.api, quickstart.NAMESPACE, datasets, models)
        print(
            f"claims datasets ({datasets}) and models ({models}) in namespace {quickstart.NAMESPACE} "
            f"in {time.monotonic() - t2:.1f}s"
        )
    env = quickstart.write_env(root / "env", kubeconfig, kubectl_binary())
    print(cluster.kubectl("get", "nodes", "-o", "wide").stdout.rstrip())
    print(f"kubeconfig: {kubeconfig}; point kubectl, the SDK and tj at the cluster with")
    print(f"  source {env}")
    print(f"logs: {root / 'cp' / 'logs'} and {root / 'node' / 'logs'}")
    return 0


def down(args: argparse.Namespace, quiet: bool = False) -> int:
    root: Path = args.root.resolve()
    node_stopped = teardown_from_state()
    cp_stopped = ControlPlane.stop_from_state(root / "cp")
    if node_stopped or cp_stopped:
        (root / "kubeconfig").unlink(missing_ok=True)
        if not quiet:
            print("real node and control plane stopped; host state restored")
        return 0
    if not quiet:
        print("no cluster was running")
    return 0


def status(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    ok = _running(root / "cp")
    print(f"running; kubeconfig: {root / 'kubeconfig'}" if ok else "not running")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transferjob_testing.cluster")
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument(
        "--bare",
        action="store_true",
        help="the node only: no operator, no quickstart claims and data (README, Quickstart)",
    )
    p.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu of the node (TEST-ONLY fake devices)")
    args = p.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
