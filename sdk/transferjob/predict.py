"""`tj predict`: a job's exported SavedModel run here on image files, the top classes with probabilities.

It calls the SavedModel's default signature with the files' bytes, as a client of TensorFlow Serving
would, so it prints what a server would answer: decoding, resizing and the base's preprocessing are
the model's own (the trainer's `export` module). It needs TensorFlow (the `trainer` or `trainer-cpu`
extra) and the model on this machine: a local job's output (or a hostPath on this node), or a folder
given as a path. TensorFlow is imported only when a model is loaded.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferjob.constants import (
    IMAGE_EXTENSIONS,
    SERVING_CLASSES,
    SERVING_INPUT,
    SERVING_SCORES,
    SERVING_SIGNATURE,
)
from transferjob.errors import ModelNotServableError, TransferJobError
from transferjob.models import TransferJob
from transferjob.serving import exported_saved_model, storage_uri

#: Images sent to the model at once (one batch is decoded in memory at a time).
BATCH_SIZE = 32
#: How the lines of a TensorFlow error message that are about the graph, not the input, begin.
_GRAPH_NOTES = ("Graph execution error", "Detected at node", "<stack traces", "[[")


@dataclass(frozen=True)
class Prediction:
    """One image's classes, most probable first, with their probabilities; or why it could not be read."""

    image: str
    classes: list[str]
    scores: list[float]
    error: str | None = None


def local_model_folder(job: TransferJob) -> Path:
    """The SavedModel base folder a succeeded job exported, when its output lies on this machine.

    A local job's output (and a hostPath one, on the node that is this machine) is a folder here;
    the folder name comes from the status, the folder from the spec (the status has the path the
    trainer saw, which in a pod is its mount).
    """
    saved = exported_saved_model(job)
    location = job.spec.output.location
    local = location.host_path or (location.uri or "").removeprefix("file://")
    if not local.startswith("/"):
        raise ModelNotServableError(
            f"TransferJob {job.metadata.name!r} wrote its model to {storage_uri(job)}, not to this "
            "machine: copy that folder here and pass its path instead of the job's name"
        )
    return Path(local) / posixpath.basename(saved.rstrip("/"))


def version_folder(path: Path) -> Path:
    """The SavedModel in `path`: `path` itself when it holds one, else its highest numbered folder,
    the version TensorFlow Serving would load."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted(
        (int(child.name), child)
        for child in (path.iterdir() if path.is_dir() else ())
        if child.name.isdigit() and (child / "saved_model.pb").is_file()
    )
    if not versions:
        raise ModelNotServableError(
            f"{path} holds no SavedModel (saved_model.pb, or a version folder 1/ with it)"
        )
    return versions[-1][1]


def image_files(paths: Sequence[str]) -> list[Path]:
    """The files named, and the image files (by extension) anywhere under the folders named, sorted."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
            if not found:
                raise TransferJobError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(sorted(found))
        elif path.is_file():
            files.append(path)
        else:
            raise TransferJobError(f"{path}: no such file or folder")
    return files


def load_serving_signature(model: Path) -> Any:
    """The default signature of the SavedModel in `model` (a base or a version folder)."""
    # TensorFlow's own warnings (one for each image it fails to decode) are not output: `predict`
    # reports every image. (TensorFlow 2.21 still prints a note on oneDNN as it loads.)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise TransferJobError(
            "tj predict needs TensorFlow: pip install 'transferjob[trainer-cpu]' (or [trainer] with a GPU)"
        ) from error
    folder = version_folder(model)
    signatures = tf.saved_model.load(str(folder)).signatures
    inputs = (
        list(signatures[SERVING_SIGNATURE].structured_input_signature[1])
        if SERVING_SIGNATURE in signatures
        else []
    )
    if inputs != [SERVING_INPUT]:
        raise ModelNotServableError(
            f"the SavedModel in {folder} does not take image files ({SERVING_SIGNATURE} signature with "
            f"input {SERVING_INPUT}; exported before the trainer wrote one?): run the job again"
        )
    return signatures[SERVING_SIGNATURE]


def predict(model: Path, images: Sequence[Path], top: int) -> Iterator[Prediction]:
    """The `top` classes of each image, in order. A batch the model cannot decode is sent again one
    image at a time, so that a broken file is named and the others are still answered."""
    signature = load_serving_signature(model)
    import tensorflow as tf

    def run(batch: Sequence[Path]) -> list[Prediction]:
        outputs = signature(**{SERVING_INPUT: tf.constant([path.read_bytes() for path in batch])})
        classes = outputs[SERVING_CLASSES].numpy()[:, :top]
        scores = outputs[SERVING_SCORES].numpy()[:, :top]
        return [
            Prediction(str(path), [c.decode() for c in names], [float(s) for s in values])
            for path, names, values in zip(batch, classes, scores, strict=True)
        ]

    for start in range(0, len(images), BATCH_SIZE):
        batch = images[start : start + BATCH_SIZE]
        try:
            yield from run(batch)
        except (tf.errors.OpError, OSError):
            for path in batch:
                try:
                    yield from run([path])
                except (tf.errors.OpError, OSError) as error:
                    yield Prediction(str(path), [], [], _reason(error))


def _reason(error: Exception) -> str:
    """What is wrong, from TensorFlow's message (which wraps it in lines about the graph)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()]
    said = [line for line in lines if line and not line.startswith(_GRAPH_NOTES)]
    return said[-1] if said else type(error).__name__
