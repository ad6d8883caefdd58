"""A real single-node cluster: the control plane on the node bridge's address plus a `RealNode`.

What ``make cluster-up``, ``make demo`` and the real-node tests start. The order matters: the bridge
first (the API server binds its address), then the control plane, then containerd (with our images
imported), the kubelet, kube-proxy and the TEST-ONLY fake GPU plugin. `install_operator` is the
README's install section for a cluster whose node has our images: ``kubectl apply -k hack/local-images``
and wait for the Deployment.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from transferjob_testing.cluster.binaries import REPO_ROOT, cache_bin_dir
from transferjob_testing.cluster.controlplane import ControlPlane
from transferjob_testing.cluster.kube import kubectl
from transferjob_testing.cluster.node import NODE_IP, RealNode
from transferjob_testing.images import ProjectImages, build_images, import_images

LOCAL_OVERLAY = REPO_ROOT / "hack" / "local-images"
DEV_TAG = "dev"
"""The tag hack/local-images names: the images of the working tree, whatever their input hash."""
OPERATOR_NAMESPACE = "transferjob-system"
OPERATOR_DEPLOYMENT = "transferjob-operator"


def kubectl_binary() -> str:
    """Our own kubectl (the cluster's version, built with the node binaries), else the one on PATH."""
    ours = cache_bin_dir() / "kubectl"
    return str(ours) if ours.exists() else "kubectl"


@dataclass
class RealCluster:
    """Control plane + real node under ``root``; images are built (cached) and imported on start."""

    root: Path
    gpus: int = 4
    detach: bool = False
    cp: ControlPlane | None = None
    node: RealNode | None = None
    images: Any = None
    _api: Any = field(default=None, repr=False)

    @property
    def control_plane(self) -> ControlPlane:
        """The running control plane (fault tests restart its API server)."""
        assert self.cp is not None, "not started"
        return self.cp

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def trainer_image(self) -> str:
        """The trainer of the working tree, as imported into containerd (``--trainer-image`` for tests)."""
        return f"localhost/transferjob/trainer:{DEV_TAG}"

    @property
    def api(self) -> client.ApiClient:
        """An admin API client (created on first use)."""
        if self._api is None:
            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def start(self) -> RealCluster:
        self.images = build_images()
        self.node = RealNode(
            self.root / "node",
            pause_image=self.images.pause.ref,
            load_images=self._load_images,
            gpus=self.gpus,
            detach=self.detach,
        ).prepare()
        try:
            self.cp = ControlPlane(self.root / "cp", address=NODE_IP, detach=self.detach).start()
            self.node.join(self.cp)
        except BaseException:
            self.stop()
            raise
        return self

    def _load_images(self, containerd_address: str) -> None:
        """Import what containerd lacks; tag trainer and operator ``:dev`` (what hack/local-images runs)."""
        images: ProjectImages = self.images
        import_images(containerd_address, [images.pause.ref, images.trainer.ref, images.operator.ref])
        for image in (images.trainer, images.operator):
            dev = f"{image.ref.rsplit(':', 1)[0]}:{DEV_TAG}"
            subprocess.run(
                [
                    "ctr",
                    "--address",
                    containerd_address,
                    "-n",
                    "k8s.io",
                    "images",
                    "tag",
                    "--force",
                    image.ref,
                    dev,
                ],
                capture_output=True,
                text=True,
                check=True,
            )

    def stop(self) -> None:
        """The node first (it stops every pod and restores the host), then the control plane."""
        if self._api is not None:
            self._api.close()
            self._api = None
        if self.node is not None:
            self.node.stop()
            self.node = None
        if self.cp is not None:
            self.cp.stop()
            self.cp = None

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """kubectl of the cluster's own version (`kubectl_binary`) with the admin kubeconfig."""
        return kubectl(self.kubeconfig, *args, check=check, timeout=timeout, binary=kubectl_binary())


def install_operator(cluster: RealCluster, timeout: float = 180.0) -> None:
    """The README's install, step for step: apply the overlay, wait for the CRD and the Deployment."""
    cluster.kubectl("apply", "-k", str(LOCAL_OVERLAY))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/transferjobs.transferjob.io",
        "crd/transfersweeps.transferjob.io",
        "--timeout=60s",
    )
    cluster.kubectl(
        "-n",
        OPERATOR_NAMESPACE,
        "rollout",
        "status",
        f"deployment/{OPERATOR_DEPLOYMENT}",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 10,
    )


def operator_pods(cluster: RealCluster) -> list[client.V1Pod]:
    core = client.CoreV1Api(cluster.api)
    return list(
        core.list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector=f"app.kubernetes.io/name={OPERATOR_DEPLOYMENT}"
        ).items
    )


def operator_logs(cluster: RealCluster, tail: int = 80) -> str:
    """The last lines of every operator replica's log, for a failing test's report."""
    core = client.CoreV1Api(cluster.api)
    out = []
    for pod in operator_pods(cluster):
        name = pod.metadata.name if pod.metadata and pod.metadata.name else ""
        with contextlib.suppress(client.ApiException):
            log = core.read_namespaced_pod_log(name, OPERATOR_NAMESPACE, tail_lines=tail)
            out.append(f"--- {name}\n{log}")
    return "\n".join(out)
