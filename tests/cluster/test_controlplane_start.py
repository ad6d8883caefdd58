"""The test control plane survives a port taken between picking it and binding it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from transferjob_testing.cluster import controlplane
from transferjob_testing.cluster.binaries import find_binaries
from transferjob_testing.cluster.controlplane import LOOPBACK, ControlPlane


def test_a_taken_port_is_retried_with_fresh_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port])  # the first pick (etcd's client port) is one somebody else already holds
        real = controlplane.free_port
        monkeypatch.setattr(controlplane, "free_port", lambda: next(picks, None) or real())
        cp = ControlPlane(tmp_path / "cp")
        cp.binaries = find_binaries()
        try:
            cp.start()
            assert cp.ports["etcd"] != port
            assert controlplane._http_ok(f"{cp.server}/readyz", cp._admin_ssl())
        finally:
            cp.stop()
    assert "address already in use" in capsys.readouterr().err


def test_other_start_failures_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(timeout: float) -> ControlPlane:
        calls.append(timeout)
        raise controlplane.ControlPlaneError("kube-apiserver exited with 1; log: bad flag")

    cp = ControlPlane(tmp_path / "cp")
    monkeypatch.setattr(cp, "_start_once", failing)
    with pytest.raises(controlplane.ControlPlaneError, match="bad flag"):
        cp.start()
    assert len(calls) == 1
