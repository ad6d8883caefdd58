"""Install and run the operator against a (test) cluster: shared by the e2e tests and `hack/demo.py`.

The operator runs as a real subprocess (`python -m transferjob_operator --kubeconfig ...`) with the
credentials of its own ServiceAccount, bound to the ClusterRole in manifests/rbac/: if it needs a
permission the manifests do not grant, the tests fail, just as the Deployment would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from transferjob.constants import CRD_NAME, SWEEP_CRD_NAME
from transferjob_testing.cluster.controlplane import free_port, stop_process
from transferjob_testing.cluster.kube import apply_yaml, wait_for
from transferjob_testing.cluster.volumes import hand_to_trainer, share_read_only
from transferjob_testing.digits import WIDE_TEST_SPLIT as WIDE_TEST_SPLIT
from transferjob_testing.digits import make_digits as make_digits

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD = REPO_ROOT / "manifests" / "crd" / "transferjob.io_transferjobs.yaml"
SWEEP_CRD = REPO_ROOT / "manifests" / "crd" / "transferjob.io_transfersweeps.yaml"
RBAC = REPO_ROOT / "manifests" / "rbac"
OPERATOR_NAMESPACE = "transferjob-system"
SERVICE_ACCOUNT = "transferjob-operator"


def install(api: client.ApiClient) -> None:
    """The CRDs (waiting until they are served) and the operator's namespace, ServiceAccount and RBAC."""
    apply_yaml(api, CRD)
    apply_yaml(api, SWEEP_CRD)
    ext = client.ApiextensionsV1Api(api)

    def established(name: str) -> bool:
        crd = ext.read_custom_resource_definition(name)
        conditions = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(lambda: established(CRD_NAME), timeout=30, what="the TransferJob CRD to be established")
    wait_for(lambda: established(SWEEP_CRD_NAME), timeout=30, what="the TransferSweep CRD to be established")
    apply_yaml(api, REPO_ROOT / "manifests" / "namespace.yaml")
    for name in ("service_account.yaml", "cluster_role.yaml", "cluster_role_binding.yaml", "user_roles.yaml"):
        apply_yaml(api, RBAC / name)


def service_account_kubeconfig(api: client.ApiClient, admin_kubeconfig: Path, path: Path) -> Path:
    """A kubeconfig holding a token of the operator's ServiceAccount (so RBAC applies to it)."""
    core = client.CoreV1Api(api)
    request = client.AuthenticationV1TokenRequest(
        api_version="authentication.k8s.io/v1",
        kind="TokenRequest",
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=86400),
    )
    wait_for(
        lambda: _exists(core, SERVICE_ACCOUNT, OPERATOR_NAMESPACE),
        timeout=30,
        what="the operator ServiceAccount",
    )
    issued = core.create_namespaced_service_account_token(SERVICE_ACCOUNT, OPERATOR_NAMESPACE, request)
    assert issued.status is not None, "the API server answered a TokenRequest without a token"
    token = issued.status.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "cluster", "user": SERVICE_ACCOUNT}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _exists(core: client.CoreV1Api, name: str, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account(name, namespace)
        return True
    except client.ApiException:
        return False


class OperatorProcess:
    """`python -m transferjob_operator` as a child process, with its log in a file.

    `namespaces` (globs allowed) limits what it serves, so that tests which run operators of their own
    (peering, restarts) are not disturbed by another one serving every namespace.
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args
        self.scope = [arg for ns in namespaces for arg in ("--namespace", ns)] or ["--all-namespaces"]
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def liveness(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        args = [
            sys.executable,
            "-m",
            "transferjob_operator",
            "--kubeconfig",
            str(self.kubeconfig),
            *self.scope,
            "--liveness",
            self.liveness,
            "--verbose",
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.liveness, timeout=2) as response:
                if response.status == 200:
                    return self
            time.sleep(0.3)
        raise RuntimeError(f"operator not live after {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def serving_operator(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    root: Path,
    extra_args: tuple[str, ...] = (),
    namespaces: tuple[str, ...] = (),
) -> Iterator[OperatorProcess]:
    """The CRD and RBAC installed, and an operator running as its ServiceAccount until the block ends.

    What a test module's operator fixture does: files (kubeconfig, log) go under `root`, and the log's
    path is printed at the end, for the output of a failing test.
    """
    install(api)
    kubeconfig = service_account_kubeconfig(api, admin_kubeconfig, root / "kubeconfig")
    process = OperatorProcess(kubeconfig, root / "operator.log", extra_args, namespaces).start()
    try:
        yield process
    finally:
        process.stop()
        print(f"operator log: {process.log_path}")


POD_BASE = "/data/source.keras"
"""The source model as a training pod on the real node sees it: `pod_data` copies it into the data
folder, which the pod mounts at /data."""


def pod_data(folder: Path, source: Path) -> Path:
    """A data folder (a hostPath or a PV) the trainer's UID can read in its pod, the source model in it."""
    shutil.copy(source, folder / "source.keras")
    share_read_only(folder)
    return folder


def pod_output(parent: Path, name: str = "out") -> Path:
    """`parent/name` as an output hostPath: the pod mounts `parent`, which the trainer's UID must own."""
    hand_to_trainer(parent)
    return parent / name


def digits_spec(
    data: dict[str, Any], output: dict[str, Any], base: str, epochs: int = 3, **extra: Any
) -> dict[str, Any]:
    """A TransferJob spec that trains in seconds on the 32x32 digits."""
    spec: dict[str, Any] = {
        "mode": "FeatureExtraction",
        "model": {"base": base, "imageSize": 32},
        "data": {"source": data, "augmentation": {"enabled": False}},
        "training": {"epochs": epochs, "batchSize": 32, "learningRate": 0.001},
        "output": {"location": output, "tensorboard": False, "savedModel": False},
        "resources": {"gpus": 1, "cpu": "1", "memory": "2Gi"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def features_then_finetune(
    data: Path, models: Path, base: str, epochs: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference workflow as two TransferJob specs: feature extraction into `models/features`, then
    fine-tuning from conv3 on, from that job's model (`model.fromJob: features`), with a tiny learning rate.
    """
    source = {"hostPath": str(data)}
    features = digits_spec(source, {"hostPath": str(models / "features")}, base, epochs=epochs)
    finetune = digits_spec(
        source,
        {"hostPath": str(models / "finetune")},
        base,
        epochs=epochs,
        mode="FineTuning",
        model={"fromJob": "features", "fineTuneAt": "conv3"},
        training={"learningRate": 0.0001},
    )
    return features, finetune


def paced_spec(
    data: dict[str, Any], output: dict[str, Any], base: str, epochs: int, **extra: Any
) -> dict[str, Any]:
    """Exactly `epochs` epochs of about 1-2 s each on 2 cores: long enough for a fault to land mid-run.

    Fine-tuning (gradient steps through the CNN in batches of 4), not feature extraction: the trainer
    trains a feature-extraction head on cached features in a fraction of a second per epoch, too fast
    to kill or suspend reliably between two epochs.
    """
    spec = digits_spec(data, output, base, epochs=epochs, **extra)
    spec["mode"] = "FineTuning"
    spec["model"] = {**spec["model"], "fineTuneAt": "conv2"}
    spec["training"] = {
        **spec["training"],
        "batchSize": 4,
        "learningRate": 0.0005,
        "earlyStopping": {"enabled": False},
    }
    return spec


def transferjob(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "transferjob.io/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }
