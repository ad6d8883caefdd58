"""README.md and docs/*.md run as written: every block marked `cluster` or `local`, in order, per file.

The cluster is the README's quickstart (`transferjob_testing.cluster.quickstart`, what
`make cluster-up` leaves): the operator installed in-cluster from `hack/local-images`, the claims
`datasets` (digits 5-9 and a small CNN pretrained on digits 0-4) and `models`, and `.local/cluster/env`
to source, here pointing at a fresh namespace of the session's real cluster. Blocks run in a folder
that links every top-level entry of the repository (so `manifests/...` resolves) and keeps what they
write. Local blocks get no kubeconfig and their own `TJ_HOME`. The cluster also serves KServe's
InferenceService API (its CRD alone), for docs/serving.md. The transcript of each file's blocks is
in the test's temporary folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster import quickstart
from transferjob_testing.cluster.kube import apply_yaml, temporary_namespace, wait_until_served
from transferjob_testing.cluster.node import NODE_NAME
from transferjob_testing.cluster.real import RealCluster, kubectl_binary
from transferjob_testing.cluster.volumes import TRAINER_UID, delete_static_volumes, hand_to_trainer
from transferjob_testing.docblocks import DocRunner, blocks, doc_files, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

RUNNABLE = ("cluster", "local")
KSERVE_CRD = (
    Path(__file__).resolve().parents[1] / "data" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
)


def _runnable_files() -> list[Path]:
    return [path for path in doc_files() if any(b.label in RUNNABLE for b in blocks(path))]


@dataclass(frozen=True)
class Quickstart:
    cluster: RealCluster
    namespace: str
    models: Path  # the `models` claim's folder on the node
    work: Path  # the blocks' working folder
    env: dict[str, str]  # what `source .local/cluster/env` gives a reader, and a TJ_HOME of the test's own

    @property
    def local_env(self) -> dict[str, str]:
        """For `local` blocks: no kubeconfig, so nothing in them can reach the cluster by accident."""
        return {k: v for k, v in self.env.items() if k != "KUBECONFIG"}


@pytest.fixture(scope="module")
def quickstart_cluster(
    in_cluster_operator: RealCluster, quickstart_datasets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Quickstart]:
    root = tmp_path_factory.mktemp("docs")
    labels = {"transferjob.io/test": "true", "pod-security.kubernetes.io/enforce": "restricted"}
    api = in_cluster_operator.api
    with temporary_namespace(api, "tj-docs", labels) as namespace:
        models = root / "models"
        hand_to_trainer(models)
        quickstart.provision(api, namespace, quickstart_datasets, models)
        # The admin kubeconfig whose context's namespace is this one: kubectl, tj and the SDK default to it.
        config = yaml.safe_load(in_cluster_operator.kubeconfig.read_text())
        for context in config["contexts"]:
            context["context"]["namespace"] = namespace
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        work = workdir(root / "work")
        env_file = work / ".local" / "cluster" / "env"
        env_file.parent.mkdir(parents=True)
        quickstart.write_env(env_file, kubeconfig, kubectl_binary())
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PATH": f"{Path(sys.executable).parent}:{Path(kubectl_binary()).parent}:{os.environ['PATH']}",
            "TJ_HOME": str(root / "tj-home"),
            "MPLBACKEND": "Agg",
        }
        # KServe's InferenceService API (its CRD, vendored for tests/sdk/test_serving.py; no controller),
        # so that docs/serving.md's `tj serve --apply` meets a real API server's validation.
        apply_yaml(api, KSERVE_CRD)
        wait_until_served(api, "serving.kserve.io", "v1beta1", "inferenceservices", namespace)
        try:
            yield Quickstart(in_cluster_operator, namespace, models, work, env)
        finally:
            client.ApiextensionsV1Api(api).delete_custom_resource_definition(
                "inferenceservices.serving.kserve.io"
            )
    delete_static_volumes(api, namespace)


@pytest.mark.parametrize("path", _runnable_files(), ids=lambda p: p.name)
def test_the_blocks_run_as_written(path: Path, quickstart_cluster: Quickstart, tmp_path: Path) -> None:
    log = tmp_path / f"{path.name}.log"
    log.touch()
    qs = quickstart_cluster
    # One runner per label, so that a file's cluster (or local) Python blocks share one interpreter.
    with (
        DocRunner(qs.work, qs.env, log) as on_cluster,
        DocRunner(qs.work, qs.local_env, log) as here,
    ):
        for block in blocks(path):
            if block.label == "cluster":
                on_cluster.run(block)
            elif block.label == "local":
                here.run(block)


def test_the_quickstart_jobs_ran_in_our_image_on_the_node(quickstart_cluster: Quickstart) -> None:
    """What the README's quickstart blocks left behind (they ran first): both examples succeeded, in our
    trainer image on the node, and the models lie on the claim, written by the trainer's UID."""
    custom = client.CustomObjectsApi(quickstart_cluster.cluster.api)
    core = client.CoreV1Api(quickstart_cluster.cluster.api)
    ns = quickstart_cluster.namespace
    for name in ("digits-features", "digits-finetune"):
        status = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)["status"]
        assert status["phase"] == "Succeeded", status
        assert status["test"]["accuracy"] > 0.9, status["test"]
        assert status["model"]["uri"] == f"/output/{name}/model.keras"
        exported = quickstart_cluster.models / name
        assert exported.stat().st_uid == TRAINER_UID
        assert (exported / "model.keras").stat().st_uid == TRAINER_UID
        pods = core.list_namespaced_pod(ns, label_selector=f"transferjob.io/job-name={name}").items
        assert pods and all(p.spec.node_name == NODE_NAME for p in pods)
        assert pods[0].spec.containers[0].image == "localhost/transferjob/trainer:dev"
