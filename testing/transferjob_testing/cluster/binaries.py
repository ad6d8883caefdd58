"""Locate the control-plane binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler).

Order of precedence, per binary, mirrors envtest so that machines that already have envtest assets
do not need a Go build:

1. ``TEST_ASSET_ETCD`` / ``TEST_ASSET_KUBE_APISERVER`` / ``TEST_ASSET_KUBE_CONTROLLER_MANAGER`` /
   ``TEST_ASSET_KUBE_SCHEDULER`` (explicit file paths);
2. ``KUBEBUILDER_ASSETS`` (a directory; envtest ships etcd and kube-apiserver only, usually);
3. the build cache written by ``make cluster-binaries``:
   ``${XDG_CACHE_HOME:-~/.cache}/transferjob/k8s-<version>/bin`` where ``<version>`` is the
   ``k8s.io/kubernetes`` version pinned in ``hack/k8s/go.mod`` (the one place it is written down).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
GO_MOD = REPO_ROOT / "hack" / "k8s" / "go.mod"
NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class BinariesMissingError(RuntimeError):
    """Raised when a control-plane binary cannot be found; the message says how to get it."""


def k8s_version() -> str:
    """The pinned Kubernetes version, read from hack/k8s/go.mod (single source of truth)."""
    for line in GO_MOD.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes" and parts[1].startswith("v1."):
            return parts[1]
    raise RuntimeError(f"no k8s.io/kubernetes require line in {GO_MOD}")


def cache_bin_dir() -> Path:
    """Where ``make cluster-binaries`` puts what it builds (outside the repository)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transferjob" / f"k8s-{k8s_version()}" / "bin"


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Absolute paths of the four executables."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path


def _candidate(name: str) -> list[Path]:
    env_name = "TEST_ASSET_" + name.upper().replace("-", "_")
    out: list[Path] = []
    if os.environ.get(env_name):
        out.append(Path(os.environ[env_name]))
    if os.environ.get("KUBEBUILDER_ASSETS"):
        out.append(Path(os.environ["KUBEBUILDER_ASSETS"]) / name)
    out.append(cache_bin_dir() / name)
    return out


def find_binaries() -> ControlPlaneBinaries:
    """Resolve every binary or raise :class:`BinariesMissingError` listing what is missing and why."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in NAMES:
        for path in _candidate(name):
            if path.is_file() and os.access(path, os.X_OK):
                found[name] = path.resolve()
                break
        else:
            missing.append(f"{name} (looked in: {', '.join(str(p) for p in _candidate(name))})")
    if missing:
        raise BinariesMissingError(
            "control-plane binaries missing: "
            + "; ".join(missing)
            + ". Run `make cluster-binaries` (builds them from the Go modules pinned in hack/k8s/go.mod), "
            "or point KUBEBUILDER_ASSETS / TEST_ASSET_* at ready binaries, or set TJ_SKIP_CLUSTER=1 to "
            "skip the cluster tests."
        )
    return ControlPlaneBinaries(
        etcd=found["etcd"],
        kube_apiserver=found["kube-apiserver"],
        kube_controller_manager=found["kube-controller-manager"],
        kube_scheduler=found["kube-scheduler"],
    )
