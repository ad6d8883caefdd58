"""Start and stop etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Everything binds to 127.0.0.1 on free ports; certificates and the service-account signing key are
generated per control-plane directory; the service ClusterIP range exists only on paper (no
component routes to it: endpoint reconciliation is off and the node-IPAM controller is disabled).
A control plane for a real node (``address`` = the node bridge's IP, see `node.py`) binds its API
server there instead, so that pods reach it through the ``kubernetes`` Service, whose endpoint the
API server then keeps up to date itself.
State (ports, pids) is written to ``<root>/state.json`` so that a different process (``make
cluster-down``) can stop what ``make cluster-up`` started.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transferjob_testing.cluster.binaries import ControlPlaneBinaries, find_binaries
from transferjob_testing.cluster.pki import CertPair, Pki

SERVICE_CIDR = "10.0.0.0/24"
"""The service ClusterIP range: allocated on paper only, never reachable and never contacted."""

LOOPBACK = "127.0.0.1"


class ControlPlaneError(RuntimeError):
    """A component failed to start or become ready; the message includes the tail of its log."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# Resolved once in the parent: a child between fork and exec must not load libraries.
try:
    PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    PRCTL = None


def die_with_parent() -> None:
    """``preexec_fn``: ask Linux to SIGTERM this child when the thread that started it dies.

    Used for everything a pytest run starts, so a killed test run (even SIGKILL) leaves no etcd,
    API server or trainer process behind. Not used by ``make cluster-up``, whose processes must
    outlive the command that started them.
    """
    if PRCTL is not None:
        PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, client: CertPair, user: str) -> Path:
    """A self-contained kubeconfig (certificates embedded) so it can be copied anywhere."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "transferjob-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "transferjob-test", "context": {"cluster": "transferjob-test", "user": user}}],
        "current-context": "transferjob-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pid_alive(pid: int, expect: str) -> bool:
    """True when ``pid`` runs and its command line mentions ``expect`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return expect in cmdline


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM a child we started, then SIGKILL after ``grace`` seconds; waits until it is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_pid(pid: int, expect: str, grace: float = 10.0) -> None:
    """SIGTERM ``pid`` (only if it is still the process we started), then SIGKILL after ``grace``."""
    if not _pid_alive(pid, expect):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            pass  # not our child: poll /proc instead
        if not _pid_alive(pid, expect):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class _Component:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0


@dataclass
class ControlPlane:
    """One control plane living in ``root`` (certificates, etcd data, logs, kubeconfigs, state).

    ``start()`` returns once the API server is ready, the controller manager and scheduler report
    healthy, and the ``default`` service account exists (so pods can be admitted).
    """

    root: Path
    binaries: ControlPlaneBinaries | None = None
    service_cidr: str = SERVICE_CIDR
    detach: bool = False  # True: components outlive this process (make cluster-up)
    address: str = LOOPBACK  # where the API server binds and advertises itself
    ports: dict[str, int] = field(default_factory=dict)
    _components: list[_Component] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        """The admin (``system:masters``) kubeconfig."""
        return self.root / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports['apiserver']}"

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def etcd_data(self) -> Path:
        """etcd's data folder: throw-away, and removed before a start is retried on fresh ports."""
        return self.root / "etcd"

    # ------------------------------------------------------------------ start
    def start(self, timeout: float = 90.0, attempts: int = 3) -> ControlPlane:
        """Generate credentials, start the four components and wait until the cluster is usable.

        Ports are picked free up front, and a component binds its port only later: in between, another
        process (one of the apiserver's own client connections to etcd included) can take it. A component
        that exits with "address already in use" is retried with fresh ports; any other failure is not.
        """
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except ControlPlaneError as exc:
                if "address already in use" not in str(exc) or attempt == attempts:
                    raise
                print(f"control plane: a port was taken before it was bound: {exc}", file=sys.stderr)
                shutil.rmtree(self.etcd_data, ignore_errors=True)
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> ControlPlane:
        binaries = self.binaries or find_binaries()
        self.binaries = binaries
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.ports = {n: free_port() for n in ("etcd", "etcd-peer", "apiserver", "cm", "scheduler")}
        pki = self.pki
        d = pki.dir
        api = pki.issue(
            "apiserver",
            "kube-apiserver",
            ips=tuple(dict.fromkeys((LOOPBACK, self.address, _first_ip(self.service_cidr)))),
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server=True,
        )
        kubelet_client = pki.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",)
        )
        admin = pki.issue("admin", "transferjob-admin", organizations=("system:masters",))
        cm_cert = pki.issue("controller-manager", "system:kube-controller-manager")
        sched_cert = pki.issue("scheduler", "system:kube-scheduler")
        sa = pki.service_account_keys()
        write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, admin, "admin")
        cm_kc = write_kubeconfig(
            self.root / "controller-manager.kubeconfig",
            self.server,
            pki.ca.cert,
            cm_cert,
            "system:kube-controller-manager",
        )
        sched_kc = write_kubeconfig(
            self.root / "scheduler.kubeconfig", self.server, pki.ca.cert, sched_cert, "system:kube-scheduler"
        )
        p = self.ports
        logs = self.root / "logs"
        etcd = _Component(
            "etcd",
            [
                str(binaries.etcd),
                "--name=default",
                f"--data-dir={self.etcd_data}",
                f"--listen-client-urls=http://{LOOPBACK}:{p['etcd']}",
                f"--advertise-client-urls=http://{LOOPBACK}:{p['etcd']}",
                f"--listen-peer-urls=http://{LOOPBACK}:{p['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://{LOOPBACK}:{p['etcd-peer']}",
                f"--initial-cluster=default=http://{LOOPBACK}:{p['etcd-peer']}",
                "--unsafe-no-fsync=true",  # throw-away data: skip fsync for speed
                "--log-level=warn",
            ],
            logs / "etcd.log",
        )
        apiserver = _Component(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers=http://{LOOPBACK}:{p['etcd']}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={d}",
                f"--tls-cert-file={api.cert}",
                f"--tls-private-key-file={api.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-account-issuer=https://{self.address}:{p['apiserver']}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,PodSecurity",
                # PodSecurity, not this flag, decides about privileged pods
                "--allow-privileged=true",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                "--kubelet-preferred-address-types=InternalIP",
                # 127.0.0.1 is not a valid Endpoints address, and without a real node nothing needs them
                *(["--endpoint-reconciler-type=none"] if self.address == LOOPBACK else []),
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-apiserver.log",
        )
        cm = _Component(
            "kube-controller-manager",
            [
                str(binaries.kube_controller_manager),
                f"--kubeconfig={cm_kc}",
                f"--authentication-kubeconfig={cm_kc}",
                f"--authorization-kubeconfig={cm_kc}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={p['cm']}",
                f"--cert-dir={self.root / 'cm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                # Only API-level controllers: no node IPAM, no cloud routes (nothing should touch networking).
                "--controllers=*,-node-ipam-controller",
                "--allocate-node-cidrs=false",
                "--configure-cloud-routes=false",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-controller-manager.log",
        )
        sched = _Component(
            "kube-scheduler",
            [
                str(binaries.kube_scheduler),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={self.root / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-scheduler.log",
        )
        deadline = time.monotonic() + timeout
        try:
            self._spawn(etcd)
            self._wait(etcd, lambda: _http_ok(f"http://{LOOPBACK}:{p['etcd']}/health"), deadline)
            self._spawn(apiserver)
            ctx = self._admin_ssl()
            self._wait(apiserver, lambda: _http_ok(f"{self.server}/readyz", ctx), deadline)
            self._spawn(cm)
            self._spawn(sched)
            insecure = _insecure_ssl()
            self._wait(cm, lambda: _http_ok(f"https://{LOOPBACK}:{p['cm']}/healthz", insecure), deadline)
            self._wait(
                sched, lambda: _http_ok(f"https://{LOOPBACK}:{p['scheduler']}/healthz", insecure), deadline
            )
            self._wait(
                cm,
                lambda: _http_ok(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default", ctx),
                deadline,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, comp: _Component) -> None:
        self._components.append(comp)
        with comp.log.open("ab") as log:
            comp.proc = subprocess.Popen(
                comp.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: Ctrl-C in a terminal reaches only us
                preexec_fn=None if self.detach else die_with_parent,
            )
        comp.pid = comp.proc.pid
        self._write_state()

    def _wait(self, comp: _Component, check: object, deadline: float) -> None:
        assert callable(check)
        while time.monotonic() < deadline:
            if comp.proc is not None and comp.proc.poll() is not None:
                raise ControlPlaneError(
                    f"{comp.name} exited with {comp.proc.returncode}; log {comp.log}:\n{_tail(comp.log)}"
                )
            if check():
                return
            time.sleep(0.1)
        raise ControlPlaneError(f"{comp.name} not ready in time; log {comp.log}:\n{_tail(comp.log)}")

    def _admin_ssl(self) -> ssl.SSLContext:
        pki = self.pki
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.dir / "admin.crt"), str(pki.dir / "admin.key"))
        return ctx

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "address": self.address,
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "components": [{"name": c.name, "pid": c.pid, "binary": c.args[0]} for c in self._components],
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop components in reverse start order (scheduler and controller manager first, etcd last)."""
        for comp in reversed(self._components):
            if comp.proc is not None:
                stop_process(comp.proc, grace=10)
        self._components.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _component(self, name: str) -> _Component:
        for comp in self._components:
            if comp.name == name:
                return comp
        raise ControlPlaneError(f"{name} is not running in this control plane")

    def stop_apiserver(self, grace: float = 10.0) -> None:
        """Stop kube-apiserver (SIGTERM, SIGKILL after ``grace``); etcd and the rest keep running.

        For fault tests: clients see connection refused until :meth:`start_apiserver`.
        """
        comp = self._component("kube-apiserver")
        if comp.proc is not None and comp.proc.poll() is None:
            comp.proc.terminate()
            try:
                comp.proc.wait(grace)
            except subprocess.TimeoutExpired:
                comp.proc.kill()
                comp.proc.wait()

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again with the same flags and port; return once ``/readyz`` is ok."""
        comp = self._component("kube-apiserver")
        if comp.proc is not None and comp.proc.poll() is None:
            raise ControlPlaneError("kube-apiserver is still running; stop it first")
        self._components.remove(comp)
        fresh = _Component(comp.name, comp.args, comp.log)
        # Same position in the list, so that stop() still stops it before etcd.
        self._spawn(fresh)
        self._components.remove(fresh)
        self._components.insert(1, fresh)
        self._write_state()
        ctx = self._admin_ssl()
        self._wait(fresh, lambda: _http_ok(f"{self.server}/readyz", ctx), time.monotonic() + timeout)

    def restart_apiserver(self, down_for: float = 0.0, timeout: float = 60.0) -> None:
        """Stop kube-apiserver, leave it down for ``down_for`` seconds, start it again (same port)."""
        self.stop_apiserver()
        time.sleep(down_for)
        self.start_apiserver(timeout)

    @staticmethod
    def stop_from_state(root: Path) -> bool:
        """Stop a control plane started by another process, using ``<root>/state.json``."""
        state_file = root / "state.json"
        if not state_file.exists():
            return False
        state = json.loads(state_file.read_text())
        for comp in reversed(state.get("components", [])):
            stop_pid(int(comp["pid"]), str(comp["binary"]))
        state_file.unlink()
        return True


def _first_ip(cidr: str) -> str:
    import ipaddress

    return str(next(ipaddress.ip_network(cidr).hosts()))


def _insecure_ssl() -> ssl.SSLContext:
    """For loopback /healthz probes of components that serve self-signed certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False
