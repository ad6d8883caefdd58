"""The run's outputs: `model.keras`, which training continues from, and a SavedModel for serving.

The SavedModel is saved from the forward pass the run already traced (`inference`), frozen where the
weights fit, instead of Keras' `model.export`, which traces the whole network again (see
`write_saved_model` for the figures).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from transferjob.models import ModelArtifacts, TransferJobSpec
from transferjob_trainer import fs
from transferjob_trainer.inference import Inference, inference_function

#: Largest total size of variables the SavedModel export folds into constants (see `write_saved_model`):
#: the graph is a protocol buffer, which cannot exceed 2 GiB, and loading a graph this large gets slow.
FREEZE_LIMIT_BYTES = 512 << 20


def write_saved_model(serve: Inference, path: str) -> None:
    """A SavedModel whose `serving_default` signature is `serve` (input `transferjob_image`: float32
    0-255 images, any batch size; output `output_0`), as Keras' `model.export` names them.

    The signature is saved from `serve`'s existing trace, with its variables folded into constants (a
    frozen graph) when they total at most `FREEZE_LIMIT_BYTES`. A SavedModel with variables carries
    save and restore operations for every one of them (some 260 for MobileNetV2): building those took
    about 1.5 s of the 3 s export on 2 CPU cores, and loading the model for serving took 1.6 s against
    0.5-0.9 s frozen. The SavedModel is for serving; `model.keras` is what training continues from.
    Larger models keep their variables. Keras' `model.export` instead traces the whole network again
    and walks every layer's trackable children: about 11 s here.
    """
    concrete = serve.get_concrete_function()
    module = tf.Module()
    size = sum(v.shape.num_elements() * v.dtype.size for v in concrete.variables)
    if size <= FREEZE_LIMIT_BYTES:
        signature = convert_variables_to_constants_v2(concrete)
    else:
        module.model_variables = list(concrete.variables)
        signature = concrete
    tf.saved_model.save(module, path, signatures={"serving_default": signature})


def export(
    model: keras.Model, output: str, spec: TransferJobSpec, serve: Inference | None = None
) -> ModelArtifacts:
    """model.keras, and the SavedModel for serving when asked (from `serve` when already traced)."""
    model_uri = fs.join(output, "model.keras")
    with fs.local_file_for_write(model_uri, ".keras") as tmp:
        model.save(tmp)
    saved_model_uri = None
    if spec.output.saved_model:
        saved_model_uri = fs.join(output, "saved_model")
        staging = tempfile.mkdtemp(prefix="savedmodel-", dir=output if fs.is_local(output) else None)
        try:
            target = os.path.join(staging, "saved_model")
            write_saved_model(serve or inference_function(model), target)
            fs.copy_tree(target, saved_model_uri)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ModelArtifacts(
        uri=model_uri,
        saved_model_uri=saved_model_uri,
        tensorboard_uri=fs.join(output, "tensorboard") if spec.output.tensorboard else None,
        metrics_uri=fs.join(output, "metrics.json"),
    )
