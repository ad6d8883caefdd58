"""Test infrastructure: a real Kubernetes control plane on loopback plus a process-based node agent.

Nothing here ships with transferjob. It exists so that cluster tests and the demo talk to a real
kube-apiserver (with etcd, kube-controller-manager and kube-scheduler behind it) instead of a mock,
on machines without a container runtime. See docs/test-control-plane.md.
"""

from __future__ import annotations

from transferjob_testing.cluster.binaries import (
    BinariesMissingError,
    ControlPlaneBinaries,
    find_binaries,
    k8s_version,
)
from transferjob_testing.cluster.controlplane import ControlPlane, ControlPlaneError

__all__ = [
    "BinariesMissingError",
    "ControlPlane",
    "ControlPlaneBinaries",
    "ControlPlaneError",
    "find_binaries",
    "k8s_version",
]
