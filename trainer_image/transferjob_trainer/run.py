"""One run, from a spec file to an exported model, without TensorFlow until the data has been checked.

Everything a retry cannot fix (the spec, the flags (`paths`), an output location another job owns, the
data) is checked first and fails within seconds with a permanent error; only then is TensorFlow imported
and the model built (`training.train`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from typing import Any

import yaml

from transferjob import yamlio
from transferjob.constants import KIND
from transferjob.errors import SpecError
from transferjob.models import TransferJobSpec, parse_spec
from transferjob.progress import Finished
from transferjob_trainer import fs
from transferjob_trainer.errors import InvalidSpecError, StorageError
from transferjob_trainer.layout import Layout, check_images, scan_layout
from transferjob_trainer.ownership import Owner, check_owner, claim_output
from transferjob_trainer.paths import RunPaths
from transferjob_trainer.report import Reporter, StepMeter, log
from transferjob_trainer.workers import Group, Worker, start_strategy


def spec_from_document(document: Any) -> TransferJobSpec:
    """A spec from a parsed YAML/JSON document: a whole TransferJob manifest or just its spec."""
    if not isinstance(document, dict):
        raise InvalidSpecError("the spec file must hold a TransferJob manifest or its spec (a mapping)")
    try:
        if "kind" in document or "apiVersion" in document:
            if document.get("kind") != KIND:
                raise InvalidSpecError(f"kind must be {KIND}, got {document.get('kind')!r}")
            spec = document.get("spec")
            if not isinstance(spec, dict):
                raise InvalidSpecError("the TransferJob manifest has no spec")
            return parse_spec(spec)
        return parse_spec(document)
    except SpecError as error:
        raise InvalidSpecError(f"invalid spec: {error}") from error


def load_spec(path: str) -> TransferJobSpec:
    """Read and validate a spec file (YAML or JSON; JSON is YAML)."""
    try:
        text = fs.read_text(fs.normalize(path))
    except OSError as error:
        raise InvalidSpecError(f"cannot read spec file {path}: {error}") from error
    try:
        document = yamlio.load(text)
    except yaml.YAMLError as error:
        raise InvalidSpecError(f"spec file {path} is not valid YAML/JSON: {error}") from error
    return spec_from_document(document)


def fingerprint(spec: TransferJobSpec, layout: Layout) -> str:
    """What must match for a checkpoint to be resumed: every setting that changes training, and the data.

    Locations, resources and the init model's path are left out: the operator may mount the same data
    or model at a different path when it restarts a pod.
    """
    relevant = {
        "mode": spec.mode.value,
        "model": spec.model.model_dump(mode="json", exclude={"from_job", "from_model"}),
        "data": spec.data.model_dump(mode="json", exclude={"source"}),
        "training": spec.training.model_dump(mode="json"),
        "files": layout.digest(),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def use_weights_cache(spec: TransferJobSpec) -> None:
    """Point Keras at `model.weightsCache` (before Keras is imported: it reads KERAS_HOME once).

    In a pod the operator mounts the cache and sets KERAS_HOME itself; a local run uses the hostPath.
    """
    cache = spec.model.weights_cache
    if cache is None:
        return
    if "KERAS_HOME" not in os.environ:
        if cache.host_path is None:
            raise InvalidSpecError(
                "model.weightsCache: a pvc cache needs a cluster (the operator mounts it); use a hostPath"
            )
        os.environ["KERAS_HOME"] = cache.host_path
    home = os.environ["KERAS_HOME"]
    if not os.path.isdir(home) or not os.access(home, os.W_OK):
        raise InvalidSpecError(
            f"model.weightsCache: {home} is not a folder the trainer can write to, and Keras uses a "
            "cache folder only when it can write to it (else it downloads into /tmp); make it a folder "
            "writable by the trainer's user"
        )
    log(f"weights cache: {home}/models")


def use_storage(spec: TransferJobSpec) -> None:
    """Point the object-store clients at `storage.endpointURL` and `storage.region` (they read the env).

    The spec's settings win over the environment's: they are what this job says. Credentials never
    come from the spec, only from the environment (in a pod: the Secret `storage.secretName` names).
    """
    storage = spec.storage
    if storage is None:
        return
    if storage.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = storage.endpoint_url
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    if storage.region:
        os.environ["AWS_REGION"] = storage.region


def check_storage(paths: RunPaths) -> None:
    """Fail in a second on a store that cannot be reached or read, before TensorFlow loads.

    Reading is what a resume does first (the checkpoint state); a store that refuses it names the URI
    and the reason now rather than after the data has been copied and the model built. So does a
    missing model to fine-tune.
    """
    if not fs.is_local(paths.output):
        fs.exists(fs.join(paths.output, "checkpoints"))
    if paths.init_model and not fs.is_local(paths.init_model) and not fs.exists(paths.init_model):
        raise StorageError(paths.init_model, "not found", "the model to fine-tune")


def stage_data(paths: RunPaths, reporter: Reporter) -> RunPaths:
    """Copy data in an object store to local disk (`$TMPDIR/transferjob-data`), as an initializer would.

    In a pod TMPDIR is the scratch volume, which must have room for the data set; a local run keeps the
    copy under the system's temporary folder and reuses the unchanged objects next time.
    """
    if fs.is_local(paths.data_root):
        return paths
    reporter.phase("loading", f"copying {paths.data_root} to local disk")
    started = time.monotonic()
    cache = os.path.join(tempfile.gettempdir(), "transferjob-data")
    folder, fetched = fs.stage_folder(paths.data_root, cache)
    log(
        f"data: {paths.data_root} is copied to {folder} ({fetched} objects downloaded in "
        f"{time.monotonic() - started:.1f}s, the others were there already)"
    )
    return dataclasses.replace(paths, data_root=folder)


def run(
    spec: TransferJobSpec, paths: RunPaths, reporter: Reporter, job: Owner | None = None
) -> Finished | None:
    """Check the output's owner and the data, claim the output for `job`, then train, test and export
    (TensorFlow is imported only past the checks).

    A worker of a group (`workers.Worker.from_env`) starts the group's strategy first (TensorFlow's
    collectives must be set up before it runs anything), then checks and trains on its own shard of
    the images; only the chief claims the output. Returns None on the other workers.
    """
    for warning in spec.warnings():
        log(f"warning: {warning}")
    worker = Worker.from_env()
    use_storage(spec)
    check_storage(paths)
    policy = spec.output.ownership_policy
    check_owner(paths.output, job, policy)
    strategy = None
    if worker is not None:
        reporter.phase("loading", f"joining workers {', '.join(worker.hosts)} as worker {worker.index}")
        strategy = start_strategy(worker)
    paths = stage_data(paths, reporter)
    reporter.phase("loading", f"checking images in {paths.data_root}")
    layout = scan_layout(paths.data_root, spec.data)
    full = layout
    if worker is not None:
        layout = worker.shard_layout(layout)
        log(worker.describe(full, layout))
    files = [
        *layout.train.files,
        *layout.val.files,
        *(layout.test.files if worker is None or worker.chief else ()),
    ]
    meter = StepMeter(reporter.emit, "loading", len(files))
    layout = check_images(layout, spec.data, on_checked=meter.advance, files=files)
    # A group fingerprints the whole data set as scanned (every worker the same; each checks only its
    # shard); one worker fingerprints what it checked, once.
    fp = fingerprint(spec, full if worker is not None else layout)
    if worker is None or worker.chief:
        claim_output(paths.output, job, policy)

    use_weights_cache(spec)
    from transferjob_trainer.training import train

    group = None
    if worker is not None:
        group = Group(strategy, worker, len(full.train), len(full.val))
    return train(spec, paths, layout, fp, reporter, group)
