"""A real Kubernetes node on this machine: containerd + runc, a CNI bridge, kube-proxy and the kubelet.

The node joins a control plane whose API server binds the bridge's own address (`ControlPlane(address=
NODE_IP)`), so that pods reach it through the ``kubernetes`` Service that kube-proxy programs. It is a
host-wide singleton (one containerd, one kubelet, fixed iptables chains), so its sockets and state live
under `RUN_DIR` and only one node may be up at a time; `RealNode.stop` and `teardown_from_state` (what
``make cluster-down`` runs from another process) stop every process and undo every change to the host
that the kubelet, kube-proxy, CNI and we made:

- the bridge `BRIDGE` and its pods' veths and network namespaces;
- our nftables table (`NFT_TABLE`): a forward-hook chain that lets traffic move only between pods on the
  bridge and an input-hook chain that lets pods reach only the bridge's own address, so nothing a pod
  sends leaves the machine or reaches another address on it (the CNI bridge is ``ipMasq: false``);
- the sysctls the kubelet and the bridge plugin set (``vm.overcommit_memory``, ``kernel.panic``,
  ``kernel.panic_on_oops``, ``net.ipv4.ip_forward``), restored to their values from before;
- the cluster DNS: a minimal CoreDNS (``hack/coredns``) on the bridge address, port 53, answering only
  for ``cluster.local`` from the API server under its own identity (``system:coredns``, read-only RBAC);
  the kubelet's ``clusterDNS``, so pods resolve Services and the stable hostnames of an Indexed Job
  behind a headless Service (``<pod>.<service>``), and nothing else (no ``forward``);
- the iptables chains of the kubelet and kube-proxy, the ``/kubepods`` cgroups, mounts under the
  kubelet's root folder, ``/var/lib/kubelet/device-plugins`` and ``/var/log/containers``.

Only Debian packages (containerd, runc, containernetworking-plugins, nftables, iptables) and the
binaries of ``hack/k8s/build.sh node`` are used. GPUs come from the TEST-ONLY fake device plugin
(``hack/k8s/cmd/test-only-fake-gpu-plugin``), through the kubelet's real device-plugin API.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transferjob_testing.cluster.binaries import cache_bin_dir
from transferjob_testing.cluster.controlplane import (
    LOOPBACK,
    ControlPlane,
    _pid_alive,
    _tail,
    die_with_parent,
    free_port,
    stop_pid,
    write_kubeconfig,
)

BRIDGE = "tj0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
"""The bridge's address: the node's InternalIP, where the API server, kubelet and NodePorts listen."""
NODE_NAME = "tj-node"
RUN_DIR = Path("/run/transferjob-node")
"""Sockets and the state file: short paths (unix sockets allow 108 bytes) that every process agrees on."""
STATE_FILE = RUN_DIR / "state.json"
"""What was started and what the host looked like before: how another process finds and stops the node."""
CONTAINERD_SOCKET = RUN_DIR / "containerd.sock"
"""containerd's CRI socket: the kubelet's runtime endpoint, and crictl's."""
KUBELET_ROOT = Path("/var/lib/transferjob-node/kubelet")
"""The kubelet's ``--root-dir``: pod volumes and its sockets, whose paths must stay under 108 bytes (a
pytest temporary folder is too deep) and which should not live in RAM (``/run``)."""
NFT_TABLE = "transferjob"
KUBELET_DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
"""Fixed by the kubelet (``pluginapi.DevicePluginPath``), whatever its ``--root-dir``."""
SYSCTLS = (
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "net.ipv4.ip_forward",
)
"""What the kubelet (``protectKernelDefaults: false``) and the CNI bridge (``isGateway``) change."""
HOST_PATHS = (Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/var/log/pods"))
"""Folders the kubelet creates at fixed places: removed on the way down if they did not exist before."""
DEB_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "nftables", "iptables", "conntrack")
CNI_BIN = Path("/usr/lib/cni")
CLUSTER_DOMAIN = "cluster.local"
COREDNS_USER = "system:coredns"
COREDNS_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["services", "namespaces", "pods"], "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
]
"""What CoreDNS's kubernetes plugin reads (the rules of kubeadm's ``system:coredns`` ClusterRole)."""


def corefile(kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """The cluster DNS: ``cluster.local`` and reverse lookups from the API server; every other name is
    refused at once (no upstream: pods may not resolve anything outside), so a lookup never hangs."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {NODE_IP}
    ready {LOOPBACK}:{ready_port}
    health {LOOPBACK}:{health_port}
    errors
    log
    loadbalance
    cache 5
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods verified
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""


class NodeError(RuntimeError):
    """The real node could not start (with the reason and the tail of the failing component's log)."""


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(
            f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def missing_prerequisites() -> list[str]:
    """What this machine lacks for a real node: root, Debian packages, the node binaries."""
    problems = []
    if os.geteuid() != 0:
        problems.append("a real node needs root (containerd, the kubelet and the bridge network)")
    for tool in ("containerd", "runc", "nft", "iptables", "ctr"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (apt-get install {' '.join(DEB_PACKAGES)})")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).exists():
            problems.append(
                f"the CNI plugin {CNI_BIN / plugin} is missing (apt-get install containernetworking-plugins)"
            )
    for binary in ("kubelet", "kube-proxy", "crictl", "test-only-fake-gpu-plugin", "coredns"):
        if not (cache_bin_dir() / binary).exists():
            problems.append(f"{cache_bin_dir() / binary} is missing (hack/k8s/build.sh node)")
    return problems


def _read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", *name.split(".")).write_text(value)


def nft_ruleset() -> str:
    """Pods may talk to each other and to the bridge's own address, and to nothing else.

    ``forward``: bridge-to-bridge is accepted, anything else forwarded into or out of the bridge is dropped
    (priority -300: before any other filter on the machine can accept it). ``input``: a packet from the
    bridge to one of the machine's own addresses is dropped unless it is for the bridge's address, so a pod
    cannot reach services that listen on the host's other interfaces either. Service ClusterIPs are
    translated by kube-proxy in prerouting, before either hook sees the packet.
    """
    return f"""
table inet {NFT_TABLE} {{
    chain forward {{
        type filter hook forward priority -300; policy accept;
        iifname "{BRIDGE}" oifname "{BRIDGE}" accept
        iifname "{BRIDGE}" counter drop comment "pods reach nothing outside the bridge"
        oifname "{BRIDGE}" counter drop comment "nothing outside the bridge reaches pods"
    }}
    chain input {{
        type filter hook input priority -300; policy accept;
        iifname "{BRIDGE}" ip daddr {POD_CIDR} accept
        iifname "{BRIDGE}" counter drop comment "pods reach only the bridge's own address on this machine"
    }}
}}
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """The CNI network: the standard bridge plugin, no masquerading, addresses from ``POD_CIDR``."""
    return {
        "cniVersion": "1.0.0",
        "name": "transferjob",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # The default route through the bridge: Service addresses (kube-proxy's DNAT in the
                # host's prerouting) are outside the pod subnet; our nftables table drops the rest.
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def containerd_config(root: Path, image_root: Path, pause_image: str) -> str:
    """containerd 1.6 (config version 2) for the kubelet: runc on cgroupfs, our CNI network and pause image.

    ``restrict_oom_score_adj``: without CAP_SYS_RESOURCE (this VM) runc cannot lower ``oom_score_adj`` and
    every sandbox fails with "can't get final child's PID from pipe: EOF". Images live in ``image_root``
    (a cache that outlives the node) so that a restart does not import them again.
    """
    return f"""version = 2
root = "{image_root}"
state = "{RUN_DIR / "containerd"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{CONTAINERD_SOCKET}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "containerd-opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{root / "cni" / "net.d"}"
"""


def kubelet_config(root: Path, ca: Path, cert: Path, key: Path, healthz_port: int) -> dict[str, Any]:
    """The kubelet's configuration file: cgroup v1 with cgroupfs, containerd, webhook auth, our CoreDNS."""
    socket = f"unix://{CONTAINERD_SOCKET}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this VM has the cgroup v1 hierarchy
        "cgroupDriver": "cgroupfs",  # no systemd
        "containerRuntimeEndpoint": socket,
        "imageServiceEndpoint": socket,
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": LOOPBACK,
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        # Pods (dnsPolicy ClusterFirst) ask our CoreDNS on the bridge address; the node itself has no
        # nameserver (dnsPolicy Default), so nothing outside this machine is ever asked anything.
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(root / "resolv.conf"),
        "podLogsDir": str(root / "pod-logs"),
        "failSwapOn": False,
        # Tests fill the disk with images and checkpoints; never evict or garbage-collect for space here.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        # CPU limits are not enforced as CFS quotas: the tests' training pods request a share of the two
        # cores to be scheduled side by side, and each may still use both while the others wait.
        "cpuCFSQuota": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "registerNode": True,
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """kube-proxy in iptables mode, serving NodePorts on the bridge address only."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"{LOOPBACK}:{healthz_port}",
        "metricsBindAddress": f"{LOOPBACK}:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "conntrack": {"maxPerCore": 0},  # leave the host's nf_conntrack_max alone
        "iptables": {"localhostNodePorts": False},
    }


@dataclass
class _Proc:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class RealNode:
    """One real node under ``root`` (configs, certificates, logs).

    `prepare` makes the bridge (the API server must bind its address, so it comes first); `join` starts
    the node's processes against a control plane started after it. ``gpus`` fake (TEST-ONLY)
    ``nvidia.com/gpu`` devices are advertised through the device-plugin API; ``load_images`` is called
    with containerd's address once it runs, before the kubelet starts (the pause image must be there).
    """

    root: Path
    pause_image: str
    load_images: Callable[[str], None] | None = None
    gpus: int = 2
    detach: bool = False
    _procs: list[_Proc] = field(default_factory=list)
    _state: dict[str, Any] = field(default_factory=dict)

    @property
    def containerd_address(self) -> str:
        return str(CONTAINERD_SOCKET)

    # ------------------------------------------------------------------ start
    def prepare(self) -> RealNode:
        """Clear a node a killed run left behind, record the host state to restore, make the network."""
        problems = missing_prerequisites()
        if problems:
            raise NodeError("cannot start a real node:\n  " + "\n  ".join(problems))
        owner = running_node()
        if owner:
            raise NodeError(
                f"a real node is already up on this machine ({owner}); there can be one only "
                "(one containerd, one kubelet): stop it first (make cluster-down)"
            )
        teardown_from_state()  # what a killed run left behind
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self._state = {
            "root": str(self.root),
            "sysctls": {name: _read_sysctl(name) for name in SYSCTLS},
            "created": [str(p) for p in HOST_PATHS if not p.exists()],
            "nft_tables": _nft_tables(),
            "pids": [],
        }
        self._save()
        try:
            setup_network()
        except BaseException:
            self.stop()
            raise
        return self

    def join(self, cp: ControlPlane, timeout: float = 120.0) -> RealNode:
        """Start containerd, the kubelet, kube-proxy and the device plugin; return once Ready with GPUs."""
        if cp.address != NODE_IP:
            raise NodeError(f"the control plane must bind the bridge address {NODE_IP}, not {cp.address}")
        deadline = time.monotonic() + timeout
        try:
            self._start_containerd(deadline)
            if self.load_images is not None:
                self.load_images(self.containerd_address)
            self._start_kubelet(cp)
            self._start_kube_proxy(cp)
            self._start_coredns(cp, deadline)
            self._start_device_plugin()
            self._wait_ready(cp, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _save(self) -> None:
        self._state["pids"] = [
            {"name": p.name, "pid": p.proc.pid, "binary": p.args[0]}
            for p in self._procs
            if p.proc is not None
        ]
        STATE_FILE.write_text(json.dumps(self._state, indent=2))

    def _spawn(self, name: str, args: list[str]) -> _Proc:
        log = self.root / "logs" / f"{name}.log"
        p = _Proc(name, args, log)
        with log.open("ab") as out:
            p.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detach,
                preexec_fn=None if self.detach else die_with_parent,
            )
        self._procs.append(p)
        self._save()
        return p

    def _check_alive(self, p: _Proc) -> None:
        if p.proc is not None and p.proc.poll() is not None:
            raise NodeError(f"{p.name} exited with {p.proc.returncode}:\n{_tail(p.log)}")

    def _wait(self, p: _Proc, check: Any, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            self._check_alive(p)
            if check():
                return
            time.sleep(0.1)
        raise NodeError(f"timed out waiting for {what}:\n{_tail(p.log)}")

    def _start_containerd(self, deadline: float) -> None:
        image_root = cache_bin_dir().parent / "containerd"
        image_root.mkdir(parents=True, exist_ok=True)
        cni_dir = self.root / "cni" / "net.d"
        cni_dir.mkdir(parents=True, exist_ok=True)
        (cni_dir / "10-transferjob.conflist").write_text(
            json.dumps(cni_config(self.root / "cni" / "ipam"), indent=2)
        )
        config = self.root / "containerd.toml"
        config.write_text(containerd_config(self.root, image_root, self.pause_image))
        p = self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait(
            p,
            lambda: _sh("ctr", "--address", self.containerd_address, "version", check=False).returncode == 0,
            deadline,
            "containerd",
        )

    def _start_kubelet(self, cp: ControlPlane) -> None:
        pki = cp.pki
        client = pki.issue(
            f"kubelet-{NODE_NAME}-client", f"system:node:{NODE_NAME}", organizations=("system:nodes",)
        )
        serving = pki.issue(
            f"kubelet-{NODE_NAME}-serving", NODE_NAME, ips=(NODE_IP,), dns=(NODE_NAME,), server=True
        )
        kubeconfig = write_kubeconfig(
            self.root / "kubelet.kubeconfig", cp.server, pki.ca.cert, client, f"system:node:{NODE_NAME}"
        )
        (self.root / "resolv.conf").write_text(
            "# no nameserver: pods may not resolve or reach anything outside\n"
        )
        config = self.root / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(kubelet_config(self.root, pki.ca.cert, serving.cert, serving.key, free_port()))
        )
        self._spawn(
            "kubelet",
            [
                str(cache_bin_dir() / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={KUBELET_ROOT}",
                f"--cert-dir={self.root / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self, cp: ControlPlane) -> None:
        pki = cp.pki
        cert = pki.issue("kube-proxy", "system:kube-proxy")
        kubeconfig = write_kubeconfig(
            self.root / "kube-proxy.kubeconfig", cp.server, pki.ca.cert, cert, "system:kube-proxy"
        )
        config = self.root / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(kube_proxy_config(kubeconfig, free_port(), free_port())))
        self._spawn("kube-proxy", [str(cache_bin_dir() / "kube-proxy"), f"--config={config}", "--v=1"])

    def _start_coredns(self, cp: ControlPlane, deadline: float) -> None:
        """CoreDNS under its own read-only identity; returns once it has synced with the API server."""
        import urllib.request

        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        try:
            rbac = client.RbacAuthorizationV1Api(api)
            role: dict[str, Any] = {"metadata": {"name": COREDNS_USER}, "rules": COREDNS_RULES}
            binding: dict[str, Any] = {
                "metadata": {"name": COREDNS_USER},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": COREDNS_USER,
                },
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
            }
            creates: list[tuple[Callable[..., Any], dict[str, Any]]] = [
                (rbac.create_cluster_role, role),
                (rbac.create_cluster_role_binding, binding),
            ]
            for create, body in creates:
                try:
                    create(body)
                except client.ApiException as exc:
                    if exc.status != 409:  # a node joining the same control plane again
                        raise
        finally:
            api.close()
        cert = cp.pki.issue("coredns", COREDNS_USER)
        kubeconfig = write_kubeconfig(
            self.root / "coredns.kubeconfig", cp.server, cp.pki.ca.cert, cert, COREDNS_USER
        )
        ready_port = free_port()
        conf = self.root / "Corefile"
        conf.write_text(corefile(kubeconfig, free_port(), ready_port))
        p = self._spawn("coredns", [str(cache_bin_dir() / "coredns"), "-conf", str(conf)])

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{ready_port}/ready", timeout=1) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        self._wait(p, ready, deadline, "CoreDNS to sync with the API server")

    def _start_device_plugin(self) -> None:
        self._spawn(
            "test-only-fake-gpu-plugin",
            [str(cache_bin_dir() / "test-only-fake-gpu-plugin"), f"--devices={self.gpus}"],
        )

    def _wait_ready(self, cp: ControlPlane, deadline: float) -> None:
        """Ready, and the kubelet counts the fake GPUs (so a GPU pod is admitted, not rejected)."""
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        core = client.CoreV1Api(api)
        try:
            while time.monotonic() < deadline:
                for p in self._procs:
                    self._check_alive(p)
                with contextlib.suppress(client.ApiException):
                    status = core.read_node(NODE_NAME).status
                    assert status is not None
                    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
                    gpus = (status.allocatable or {}).get("nvidia.com/gpu", "0")
                    if ready and int(gpus) == self.gpus:
                        return
                time.sleep(0.2)
        finally:
            api.close()
        kubelet = next(p for p in self._procs if p.name == "kubelet")
        raise NodeError(
            f"node {NODE_NAME} was not Ready with {self.gpus} GPUs in time:\n{_tail(kubelet.log)}"
        )

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop every process and restore the host (see the module docstring)."""
        teardown_from_state()
        self._procs.clear()


def setup_network() -> None:
    """The bridge with the node address, and the nftables table that keeps pod traffic on the bridge."""
    if _sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "replace", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    _sh("nft", "delete", "table", "inet", NFT_TABLE, check=False)
    subprocess.run(["nft", "-f", "-"], input=nft_ruleset(), text=True, check=True, capture_output=True)


#: ``pgrep -f`` patterns of the node's processes, matched on the program (argv[0]): a CI runner or an
#: editor whose command line merely mentions "kubelet" is not part of a node (a CI run once saw such a
#: process on both sides of a teardown).
NODE_PROCESSES = {
    "kubelet": r"^(\S*/)?kubelet( |$)",
    "kube-proxy": r"^(\S*/)?kube-proxy( |$)",
    "test-only-fake-gpu-plugin": r"^(\S*/)?test-only-fake-gpu-plugin( |$)",
    "containerd": r"^(\S*/)?containerd --config \S*/containerd\.toml( |$)",
    "containerd shims": rf"^(\S*/)?containerd-shim-runc-v2 .*{re.escape(str(CONTAINERD_SOCKET))}",
}


def host_state() -> dict[str, Any]:
    """Everything a node changes on the host, as comparable values: what a teardown must restore."""

    def lines(*args: str) -> list[str]:
        return subprocess.run(list(args), capture_output=True, text=True, check=False).stdout.splitlines()

    chains = sorted(
        f"{tool} {table} {line.split()[1]}"
        for tool in ("iptables", "ip6tables")
        for table in ("filter", "nat", "mangle")
        for line in lines(tool, "-w", "-t", table, "-S")
        if line.startswith("-N ")
    )
    return {
        "sysctls": {name: _read_sysctl(name) for name in SYSCTLS},
        "links": sorted(line.split()[0].split("@")[0] for line in lines("ip", "-br", "link")),
        "nft tables": sorted(_nft_tables()),
        "iptables chains": chains,
        "kubepods cgroups": [str(p) for p in _kubepods_cgroups()],
        "paths": {str(p): p.exists() for p in (*HOST_PATHS, RUN_DIR, KUBELET_ROOT.parent)},
        "processes": sorted(
            name
            for name, pattern in NODE_PROCESSES.items()
            if subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False).returncode == 0
        ),
    }


def crictl_command(*args: str) -> list[str]:
    """``crictl`` (built with the node binaries) against the node's containerd, with ``args``."""
    endpoint = f"--runtime-endpoint=unix://{CONTAINERD_SOCKET}"
    return [str(cache_bin_dir() / "crictl"), endpoint, "--timeout=30s", *args]


def running_node() -> str:
    """Who runs the real node of this machine, if any process of it is alive ("" when none is)."""
    if not STATE_FILE.exists():
        return ""
    state = json.loads(STATE_FILE.read_text())
    alive = [p for p in state.get("pids", []) if _pid_alive(int(p["pid"]), str(p["binary"]))]
    return ", ".join(f"{p['name']} pid {p['pid']}" for p in alive) + (
        f"; root {state['root']}" if alive else ""
    )


def clear_leftovers() -> bool:
    """Restore the host from a node whose run was killed (processes gone, host changes still there).

    Call before taking a `host_state` snapshot to compare a teardown against: a CI machine that is
    reused after a run was cut short otherwise records the dead node's bridge, chains and sysctls as
    "before", and a clean teardown then looks like a failure. Raises `NodeError` while a node is alive.
    """
    owner = running_node()
    if owner:
        raise NodeError(
            f"a real node is already up on this machine ({owner}): stop it first (make cluster-down)"
        )
    restored = teardown_from_state()
    # Without a state file, a node's ``/kubepods`` cgroups can still be there: a teardown whose pod
    # processes outlived it (CI once recorded them as the host's own, and then a clean teardown that
    # removed them looked like a failure). With no node up, nothing else owns them.
    if _kubepods_cgroups():
        other = subprocess.run(
            ["pgrep", "-a", "-f", NODE_PROCESSES["kubelet"]], capture_output=True, text=True, check=False
        ).stdout.strip()
        if other:
            raise NodeError(f"a kubelet not ours runs here and owns /kubepods: {other}; stop it first")
        left = _remove_kubepods_cgroups()
        if left:
            raise NodeError(f"cannot remove the cgroups of a dead node: {', '.join(left)}")
        restored = True
    return restored


def teardown_from_state() -> bool:
    """Stop a node that this or another process started, and restore the host; False if none was up."""
    if not STATE_FILE.exists():
        return False
    state = json.loads(STATE_FILE.read_text())
    root = Path(state["root"])
    pids = {p["name"]: p for p in state.get("pids", [])}

    def stop(name: str) -> None:
        if name in pids:
            stop_pid(int(pids[name]["pid"]), str(pids[name]["binary"]), grace=10)

    stop("test-only-fake-gpu-plugin")
    stop("coredns")
    stop("kubelet")  # first, or it would start the pods again
    if CONTAINERD_SOCKET.exists() and (cache_bin_dir() / "crictl").exists():
        # Stops every pod sandbox: containers die, CNI DEL releases addresses and removes the veths.
        subprocess.run(crictl_command("rmp", "--all", "--force"), capture_output=True, check=False)
    stop("kube-proxy")
    kube_proxy_config_file = root / "kube-proxy.yaml"
    if kube_proxy_config_file.exists() and (cache_bin_dir() / "kube-proxy").exists():
        subprocess.run(
            [str(cache_bin_dir() / "kube-proxy"), f"--config={kube_proxy_config_file}", "--cleanup"],
            capture_output=True,
            check=False,
        )
    stop("containerd")
    _kill_shims(str(CONTAINERD_SOCKET))
    _unmount_under((root, RUN_DIR, KUBELET_ROOT))
    _remove_kubepods_cgroups()
    _remove_iptables_chains()
    _sh("nft", "delete", "table", "inet", NFT_TABLE, check=False)
    _remove_new_empty_tables(state.get("nft_tables", []))
    _sh("ip", "link", "del", BRIDGE, check=False)
    for name, value in state.get("sysctls", {}).items():
        _write_sysctl(name, value)
    shutil.rmtree(KUBELET_DEVICE_PLUGINS, ignore_errors=True)
    _remove_unmounted_tree(KUBELET_ROOT.parent)
    for path in state.get("created", []):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(root / "cni" / "ipam", ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    return True


def _nft_tables() -> list[str]:
    """``family name`` of every nftables table (iptables-nft keeps the iptables tables there too)."""
    out = _sh("nft", "list", "tables", check=False).stdout
    return [line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table ")]


def _remove_new_empty_tables(before: list[str]) -> None:
    """Tables that iptables-nft made for the kubelet or kube-proxy and that hold no rule any more."""
    for table in _nft_tables():
        if table in before:
            continue
        listing = _sh("nft", "list", "table", *table.split(), check=False).stdout.splitlines()
        body = [line.strip() for line in listing if line.strip() and not line.lstrip().startswith("#")]
        structural = ("table ", "chain ", "type ", "}")
        if all(line.startswith(structural) for line in body):
            _sh("nft", "delete", "table", *table.split(), check=False)


def _kill_shims(address: str) -> None:
    """containerd-shim-runc-v2 processes of our containerd outlive it; they hold pod containers."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and address.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), 9)


def _unmount_under(prefixes: tuple[Path, ...]) -> None:
    """Lazy-unmount everything mounted below our folders (pod volumes, netns, rootfs), deepest first."""
    mounts = [target for p in prefixes for target in _mounts_under(p)]
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _mounts_under(path: Path) -> list[str]:
    targets = [
        line.split()[1].replace("\\040", " ") for line in Path("/proc/mounts").read_text().splitlines()
    ]
    return [t for t in targets if t == str(path) or t.startswith(f"{path}/")]


def _remove_unmounted_tree(path: Path) -> None:
    """Remove the kubelet's folder, but never through a mount: a pod's hostPath or PV bind-mounts the
    user's own data there, and deleting through it would delete the data."""
    left = _mounts_under(path)
    if left:
        print(f"real node: not removing {path}: still mounted below it: {', '.join(left)}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


def _kubepods_cgroups() -> list[Path]:
    """The top of the kubelet's QoS hierarchy in every cgroup controller (v1) or the unified tree."""
    return sorted(Path("/sys/fs/cgroup").glob("*/kubepods")) + sorted(Path("/sys/fs/cgroup").glob("kubepods"))


def _remove_kubepods_cgroups(timeout: float = 20.0) -> list[str]:
    """Remove the kubelet's QoS hierarchy (``/kubepods/...``), children first; return what is left.

    A cgroup with a process in it cannot be removed (EBUSY). With containerd and its shims gone, a pod's
    processes can outlive them (a killed shim's container is re-parented, not killed), so whatever is
    still in a kubepods cgroup is killed first and the removal is retried until they have exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        left: list[str] = []
        for top in _kubepods_cgroups():
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, top]:
                _kill_cgroup_members(d)
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(str(d))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if left:
        print(f"real node: cgroups still busy after {timeout:.0f}s: {', '.join(left)}", file=sys.stderr)
    return left


def _kill_cgroup_members(cgroup: Path) -> None:
    """SIGKILL every process in ``cgroup`` (only a dead node's pods live under ``kubepods``)."""
    try:
        pids = (cgroup / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def _remove_iptables_chains() -> None:
    """Every ``KUBE-*`` chain of the kubelet and kube-proxy and the rules that jump to them (IPv4, IPv6)."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listing = _sh(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
            chains = [line.split()[1] for line in listing if line.startswith("-N KUBE-")]
            for line in listing:
                parts = shlex.split(line)
                if (
                    parts[:1] == ["-A"]
                    and not parts[1].startswith("KUBE-")
                    and any(c in parts for c in chains)
                ):
                    _sh(tool, "-w", "-t", table, "-D", *parts[1:], check=False)
            for chain in chains:
                _sh(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in chains:
                _sh(tool, "-w", "-t", table, "-X", chain, check=False)


__all__ = [
    "BRIDGE",
    "NODE_IP",
    "NODE_NAME",
    "POD_CIDR",
    "NodeError",
    "RealNode",
    "clear_leftovers",
    "missing_prerequisites",
    "teardown_from_state",
]
