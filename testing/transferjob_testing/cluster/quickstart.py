"""The quickstart: what `make cluster-up` leaves on the real node for README.md and docs/*.md to run on.

A data scientist's first hour needs more than a node: the operator running in-cluster, the claims the
examples name with data and a pretrained model on them, and one line that points kubectl, the SDK and
`tj` at the cluster. This cluster cannot download ImageNet weights, so the "pretrained CNN" is a small
one trained on digits 0-4 and the task is digits 5-9 (`manifests/examples/digits/`).

The docs test (tests/node/test_docs.py) prepares a namespace of the session's cluster with the same
functions and runs the docs' marked blocks against it, so what the README promises is what this builds.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from transferjob_testing.cluster.binaries import REPO_ROOT
from transferjob_testing.cluster.volumes import hand_to_trainer, share_read_only, static_volume
from transferjob_testing.digits import WIDE_TEST_SPLIT, make_digits

EXAMPLES = REPO_ROOT / "manifests" / "examples" / "digits"
NAMESPACE = "default"
DATA_FOLDER = "digits-5-9"
"""The folder on the `datasets` claim that the examples name (`make_digits` writes it)."""
SOURCE_MODEL = "source.keras"


def write_datasets(root: Path) -> Path:
    """`root/datasets`: digits 5-9 in train/val/test and the source model, readable by the trainer's
    UID. Reused when it exists (the pretraining takes a minute); jobs only read it."""
    datasets = root / "datasets"
    data, source = make_digits(datasets, split=WIDE_TEST_SPLIT)
    assert (data.name, source.name) == (DATA_FOLDER, SOURCE_MODEL), (data, source)
    share_read_only(datasets)
    return datasets


def write_volumes(root: Path) -> tuple[Path, Path]:
    """`root/datasets` (`write_datasets`) and `root/models`, empty and the trainer's.

    `models` starts empty even in a kept folder: the runs there belong to earlier TransferJobs (their
    `owner.json`), and today's jobs of the same names would fail on them with OutputInUse.
    """
    models = root / "models"
    shutil.rmtree(models, ignore_errors=True)
    hand_to_trainer(models)
    return write_datasets(root), models


def provision(api: client.ApiClient, namespace: str, datasets: Path, models: Path) -> None:
    """The claims `datasets` and `models` in `namespace`, bound to the two folders on the node."""
    static_volume(api, namespace, "datasets", datasets)
    static_volume(api, namespace, "models", models)


def example(name: str) -> dict[str, Any]:
    """One of `manifests/examples/digits/` as a manifest (`01-feature-extraction`, `02-fine-tuning`)."""
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return loaded


def write_env(path: Path, kubeconfig: Path, kubectl: str) -> Path:
    """The file the README sources: KUBECONFIG, and PATH with the venv (python, tj) and our kubectl."""
    bins = [str(Path(sys.executable).parent)]
    if "/" in kubectl:
        bins.append(str(Path(kubectl).parent))
    path.write_text(
        "# Written by `make cluster-up`: `source` it to point kubectl, the SDK and tj at that cluster.\n"
        f"export KUBECONFIG={shlex.quote(str(kubeconfig))}\n"
        f"export PATH={':'.join(shlex.quote(b) for b in bins)}:$PATH\n"
    )
    return path
