"""The run's outputs: `model.keras`, which training continues from, and a SavedModel for serving.

The SavedModel is laid out as TensorFlow Serving and KServe load a model: `<output>/saved_model/` is the
model's base folder and `1/` in it the one version a job exports (a server loads the highest numbered
folder). It is saved from the forward pass the run already traced (`inference`), frozen where the
weights fit, instead of Keras' `model.export`, which traces the whole network again (see
`write_saved_model` for the figures). Its signatures answer with class names, so a client needs
neither the label order nor this package.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from transferjob.constants import SERVING_CLASSES, SERVING_INPUT, SERVING_SCORES, SERVING_SIGNATURE
from transferjob.models import ModelArtifacts, TransferJobSpec
from transferjob_trainer import fs
from transferjob_trainer.inference import Inference, inference_function
from transferjob_trainer.pipeline import decode_resize

#: Largest total size of variables the SavedModel export folds into constants (see `write_saved_model`):
#: the graph is a protocol buffer, which cannot exceed 2 GiB, and loading a graph this large gets slow.
FREEZE_LIMIT_BYTES = 512 << 20
#: The SavedModel's base folder in the output, and the version folder in it that holds the model.
SAVED_MODEL_FOLDER = "saved_model"
SAVED_MODEL_VERSION = "1"
#: The signature over decoded images (float32 0-255 RGB, `imageSize` square, any batch size), for
#: clients that decode themselves; its input is the model's own (`modeling.INPUT_NAME`).
IMAGES_SIGNATURE = "predict_images"


def labelled(probabilities: tf.Tensor, classes: Sequence[str]) -> dict[str, tf.Tensor]:
    """Every class's name and probability, most probable first: `classes` and `scores`, [batch, classes].

    A binary model's single sigmoid unit is the second class's probability (labels are 0 and 1).
    """
    if probabilities.shape[-1] == 1:
        probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
    scores, indices = tf.math.top_k(probabilities, k=len(classes))
    return {SERVING_CLASSES: tf.gather(tf.constant(list(classes)), indices), SERVING_SCORES: scores}


def variables_bytes(fn: Any) -> int:
    """Total size of the variables a traced function captures."""
    return sum(v.shape.num_elements() * v.dtype.size for v in fn.variables)


class FrozenBase:
    """Feature extraction's base pass with its variables folded into constants, made on a thread of its
    own while the feature pass runs.

    Folding is most of the SavedModel export's cost (about 1.2 s of 2.4 s for MobileNetV2 on 2 CPU
    cores), and the base it folds never changes during feature extraction: its weights are frozen and
    it runs in inference mode, so BatchNormalization's statistics stay as they are. The feature pass
    spends its time inside TensorFlow's kernels, which release the GIL, so the folding runs beside it
    instead of after training. The export then folds only the head (`write_saved_model`).
    """

    def __init__(self, extract: Inference) -> None:
        self._concrete = extract.get_concrete_function()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fold, name="freeze-base", daemon=True)
        self._thread.start()

    @staticmethod
    def fits(extract: Inference) -> bool:
        """Whether the base is small enough to fold (`FREEZE_LIMIT_BYTES`)."""
        return variables_bytes(extract.get_concrete_function()) <= FREEZE_LIMIT_BYTES

    def _fold(self) -> None:
        try:
            self._result = convert_variables_to_constants_v2(self._concrete)
        except BaseException as error:  # handed to the caller of `result`, on the main thread
            self._error = error

    def result(self) -> Any:
        """The folded base pass (a concrete function returning a list), waiting for it if need be."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def write_saved_model(
    serve: Inference,
    path: str,
    classes: Sequence[str],
    base: tuple[FrozenBase, keras.Model] | None = None,
) -> None:
    """A SavedModel with two signatures over `serve`, both answering `classes` and `scores`:
    `serving_default` takes encoded image files (input `image_bytes`, a batch of strings), decoded and
    resized by the function the training pipeline uses (`pipeline.decode_resize`); `predict_images`
    takes the decoded images (input `transferjob_image`: float32 0-255, any batch size). The base's
    `preprocess_input` is a layer of the model, so both apply it as training did.

    The signatures call `serve`'s existing trace, with its variables folded into constants (a frozen
    graph, stored once for both) when they total at most `FREEZE_LIMIT_BYTES`. A SavedModel with
    variables carries save and restore operations for every one of them (some 260 for MobileNetV2):
    building those took about 1.5 s of the 3 s export on 2 CPU cores, and loading the model for serving
    took 1.6 s against 0.5-0.9 s frozen. The SavedModel is for serving; `model.keras` is what training
    continues from. Larger models keep their variables. Keras' `model.export` instead traces the whole
    network again and walks every layer's trackable children: about 11 s here.

    `base` is feature extraction's (`FrozenBase`, head): the base comes folded already and only the
    head is folded here; `serve` is head(base) over the same layers, so the signatures compute the same.
    """
    module = tf.Module()
    forward: Callable[[tf.Tensor], Any]
    if base is not None:
        frozen_base, head = base
        head_spec = tf.TensorSpec([None, *head.inputs[0].shape[1:]], tf.float32)
        head_pass = tf.function(lambda features: head(features, training=False), input_signature=[head_spec])
        frozen_head = convert_variables_to_constants_v2(head_pass.get_concrete_function())
        frozen = frozen_base.result()

        def forward(images: tf.Tensor) -> Any:
            return frozen_head(tf.nest.flatten(frozen(images))[0])

    else:
        concrete = serve.get_concrete_function()
        if variables_bytes(concrete) <= FREEZE_LIMIT_BYTES:
            forward = convert_variables_to_constants_v2(concrete)
        else:
            module.model_variables = list(concrete.variables)
            forward = concrete
    images_spec = serve.input_signature[0]
    image_size = int(images_spec.shape[1])

    def predict(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # A frozen function returns its outputs as a list, the traced one as a tensor.
        return labelled(tf.nest.flatten(forward(images))[0], classes)

    def decode(data: tf.Tensor) -> tf.Tensor:
        return decode_resize(data, image_size)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        decoded = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8)
        )
        return predict(tf.cast(decoded, tf.float32))

    signatures = {
        SERVING_SIGNATURE: from_bytes.get_concrete_function(),
        IMAGES_SIGNATURE: tf.function(predict, input_signature=[images_spec]).get_concrete_function(),
    }
    tf.saved_model.save(module, path, signatures=signatures)


def export(
    model: keras.Model,
    output: str,
    spec: TransferJobSpec,
    classes: Sequence[str],
    serve: Inference | None = None,
    base: tuple[FrozenBase, keras.Model] | None = None,
) -> ModelArtifacts:
    """model.keras, and the SavedModel for serving when asked (from `serve` when already traced, with
    feature extraction's base folded beforehand when `base` is given: see `write_saved_model`).

    `saved_model_uri` is the SavedModel's base folder, which servers are pointed at; the model itself
    is in its version folder (`SAVED_MODEL_VERSION`).
    """
    model_uri = fs.join(output, "model.keras")
    with fs.local_file_for_write(model_uri, ".keras") as tmp:
        model.save(tmp)
    saved_model_uri = None
    if spec.output.saved_model:
        saved_model_uri = fs.join(output, SAVED_MODEL_FOLDER)
        staging = tempfile.mkdtemp(prefix="savedmodel-", dir=output if fs.is_local(output) else None)
        try:
            target = os.path.join(staging, SAVED_MODEL_FOLDER)
            write_saved_model(
                serve or inference_function(model), os.path.join(target, SAVED_MODEL_VERSION), classes, base
            )
            fs.copy_tree(target, saved_model_uri)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ModelArtifacts(
        uri=model_uri,
        saved_model_uri=saved_model_uri,
        tensorboard_uri=fs.join(output, "tensorboard") if spec.output.tensorboard else None,
        metrics_uri=fs.join(output, "metrics.json"),
    )
