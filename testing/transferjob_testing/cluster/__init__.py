"""Test infrastructure: a real Kubernetes control plane and a real single node on this machine.

Nothing here ships with transferjob. It exists so that the tests, the demo and the benchmarks talk to
a real kube-apiserver (with etcd, kube-controller-manager and kube-scheduler behind it) instead of a
mock, and run pods with the real kubelet, containerd and runc in our own images. See
docs/test-control-plane.md and docs/real-node.md.
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
