"""Base networks, their preprocessing, the new head, and the end-to-end model that gets exported.

The exported model is one Keras model, image (0-255 RGB) -> prediction, built only from stock Keras
layers so that `keras.models.load_model("model.keras")` works anywhere without this package:

    image -> preprocess -> base (nested model named "base") -> pool -> hidden_i -> dropout -> predictions

- `preprocess` reproduces the base's own `keras.applications.<module>.preprocess_input` with stock layers
  (Rescaling, Normalization, or a frozen 1x1 Dense for Caffe's RGB->BGR + mean). A unit test checks each
  module against the real function.
- Bring-your-own base (a saved .keras/.h5 model as `model.base`): the base is the saved model up to its
  feature layer: a layer named `features` if there is one, else the last global-pooling or Flatten layer,
  else everything but the last layer. It must take raw 0-255 RGB images (do your own scaling inside).
- Feature extraction splits the model at the pooled features: `extractor` (image -> features) runs once
  per image, `head` (features -> prediction) trains; the head shares its layers with the full model, so
  training the head trains the exported model.
- Fine-tuning unfreezes the base from `fineTuneAt` on but keeps every BatchNormalization layer frozen,
  which in Keras 3 also means inference mode. (Calling the nested base with `training=False` is not
  enough in Keras 3: the moving statistics of a nested functional model still update under `fit`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from transferjob.bases import BASES
from transferjob.models import HeadSpec
from transferjob_trainer import fs
from transferjob_trainer.errors import InvalidSpecError

#: Top-level names of the end-to-end model; distinct from names a saved base may use, since a nested
#: model's own names are scoped but the outer model's must be unique.
INPUT_NAME = "transferjob_image"
BASE_LAYER = "base"
PREPROCESS_LAYER = "preprocess"
POOL_LAYER = "pool"
OUTPUT_LAYER = "predictions"
FEATURES_LAYER = "features"

#: `keras.applications` preprocessing modes by module: tf scales to [-1, 1], caffe flips RGB->BGR and
#: subtracts the ImageNet mean, torch scales to [0, 1] and standardises, none leaves 0-255 (the network
#: rescales inside).
PREPROCESS_MODES = {
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "mobilenet_v3": "none",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet": "caffe",
    "resnet50": "caffe",
    "resnet_v2": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "xception": "tf",
    "densenet": "torch",
    "nasnet": "tf",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "convnext": "none",
}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocessing_layer(module: str) -> keras.layers.Layer | None:
    """Stock layers equivalent to `keras.applications.<module>.preprocess_input`, or None (identity)."""
    mode = PREPROCESS_MODES.get(module)
    if mode is None:
        raise InvalidSpecError(f"no preprocessing known for keras.applications.{module}")
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_LAYER)
    if mode == "torch":
        return keras.layers.Normalization(
            axis=-1,
            mean=[255.0 * m for m in _TORCH_MEAN],
            variance=[(255.0 * s) ** 2 for s in _TORCH_STD],
            name=PREPROCESS_LAYER,
        )
    if mode == "caffe":
        flip = np.zeros((3, 3), dtype=np.float32)
        flip[0, 2] = flip[1, 1] = flip[2, 0] = 1.0  # output channel c = input channel 2-c (RGB->BGR)
        layer = keras.layers.Dense(
            3,
            use_bias=True,
            kernel_initializer=keras.initializers.Constant(flip),
            bias_initializer=keras.initializers.Constant(-np.asarray(_CAFFE_MEAN_BGR, dtype=np.float32)),
            trainable=False,
            name=PREPROCESS_LAYER,
        )
        return layer
    return None


def load_saved_model(uri: str, what: str) -> keras.Model:
    """Load a .keras/.h5 model (local or remote) without its training configuration."""
    if not fs.exists(fs.normalize(uri)):
        raise InvalidSpecError(f"{what} {uri} does not exist")
    try:
        with fs.local_copy_for_read(fs.normalize(uri)) as path:
            return keras.models.load_model(path, compile=False)
    except (ValueError, OSError, TypeError) as error:
        raise InvalidSpecError(f"cannot load {what} {uri}: {error}") from error


def cut_layer(model: keras.Model) -> keras.layers.Layer:
    """Where a saved model's features end (see the module docstring for the convention)."""
    names = {layer.name: layer for layer in model.layers}
    if FEATURES_LAYER in names:
        return names[FEATURES_LAYER]
    pooling = (
        keras.layers.GlobalAveragePooling2D,
        keras.layers.GlobalMaxPooling2D,
        keras.layers.Flatten,
    )
    for layer in reversed(model.layers):
        if isinstance(layer, pooling):
            return layer
    if len(model.layers) < 3:
        raise InvalidSpecError(f"saved base {model.name} is too small to cut off a classifier")
    return model.layers[-2]


def base_from_saved_model(model: keras.Model, image_size: int) -> keras.Model:
    """The saved model up to its feature layer, as a nested model named `base`."""
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (None, 3):
        raise InvalidSpecError(f"saved base must take RGB images (H, W, 3), takes {shape}")
    if shape[0] not in (None, image_size) or shape[1] not in (None, image_size):
        raise InvalidSpecError(
            f"saved base takes {shape[0]}x{shape[1]} images but model.imageSize is {image_size}"
        )
    layer = cut_layer(model)
    return keras.Model(model.inputs[0], layer.output, name=BASE_LAYER)


def application_base(name: str, weights: str, image_size: int) -> keras.Model:
    """A `keras.applications` network without its classifier, weights imagenet/none/a file."""
    constructor = getattr(keras.applications, name)
    shape = (image_size, image_size, 3)
    if weights == "none":
        network = constructor(include_top=False, weights=None, input_shape=shape)
    elif weights == "imagenet":
        network = constructor(include_top=False, weights="imagenet", input_shape=shape)
    else:
        if not fs.exists(fs.normalize(weights)):
            raise InvalidSpecError(f"model.weights file {weights} does not exist")
        with fs.local_copy_for_read(fs.normalize(weights)) as path:
            try:
                network = constructor(include_top=False, weights=path, input_shape=shape)
            except ValueError as error:
                raise InvalidSpecError(f"cannot load model.weights {weights} into {name}: {error}") from error
    return keras.Model(network.inputs[0], network.outputs[0], name=BASE_LAYER)


def build_base(base: str, weights: str, image_size: int) -> tuple[keras.Model, str | None]:
    """The base network and the preprocessing module it expects (None for a saved model)."""
    info = BASES.get(base)
    if info is not None:
        return application_base(info.name, weights, image_size), info.preprocess_module
    return base_from_saved_model(load_saved_model(base, "model.base"), image_size), None


def build_model(
    base: keras.Model, n_classes: int, head: HeadSpec, image_size: int, preprocess_module: str | None
) -> keras.Model:
    """The end-to-end model: image -> preprocess -> frozen-by-default base -> head -> prediction.

    Binary problems get one sigmoid unit, others a softmax; the output layer is float32 even under
    mixed precision, for numerically sound losses.
    """
    base.trainable = False
    image = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = image
    preprocess = preprocessing_layer(preprocess_module) if preprocess_module else None
    if preprocess is not None:
        x = preprocess(x)
    x = base(x, training=False)
    if len(x.shape) == 4:
        pool = (
            keras.layers.GlobalAveragePooling2D if head.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        )
        x = pool(name=POOL_LAYER)(x)
    elif len(x.shape) != 2:
        raise InvalidSpecError(f"base output must be a feature map or a vector, got shape {tuple(x.shape)}")
    for i, units in enumerate(head.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
    if head.dropout > 0:
        x = keras.layers.Dropout(head.dropout, name="dropout")(x)
    binary = n_classes == 2
    output = keras.layers.Dense(
        1 if binary else n_classes,
        activation="sigmoid" if binary else "softmax",
        dtype="float32",
        name=OUTPUT_LAYER,
    )(x)
    return keras.Model(image, output, name="transfer_model")


def feature_layer_index(model: keras.Model) -> int:
    """Index in `model.layers` of the layer whose output the head starts from."""
    names = [layer.name for layer in model.layers]
    for name in (POOL_LAYER, BASE_LAYER):
        if name in names:
            return names.index(name)
    raise InvalidSpecError("model has neither a 'pool' nor a 'base' layer; it was not built by a TransferJob")


@dataclass
class SplitModel:
    """The feature extractor and the head of an end-to-end model; the head shares its layers."""

    extractor: keras.Model
    head: keras.Model


def split_model(model: keras.Model) -> SplitModel:
    """Cut the end-to-end model at its pooled features.

    Both halves are rebuilt as chains over the model's own layer objects (the model is a chain:
    preprocess, base, pool, head layers), so they share weights with it. Reading a nested layer's
    `.output` would not work: a nested model's `.output` is its inner graph's, not the outer call's.
    """
    index = feature_layer_index(model)
    image = keras.Input(tuple(model.inputs[0].shape[1:]), name=INPUT_NAME)
    x = image
    for layer in model.layers[1 : index + 1]:
        x = layer(x, training=False) if layer.name == BASE_LAYER else layer(x)
    extractor = keras.Model(image, x, name="extractor")
    features = keras.Input(tuple(x.shape[1:]), name="head_input")
    y = features
    for layer in model.layers[index + 1 :]:
        y = layer(y)
    return SplitModel(extractor, keras.Model(features, y, name="head"))


def find_base(model: keras.Model) -> keras.Model:
    """The nested base of an end-to-end model (a model without one is its own base)."""
    try:
        layer = model.get_layer(BASE_LAYER)
    except ValueError:
        return model
    return layer if isinstance(layer, keras.Model) else model


def resolve_layer_index(base: keras.Model, fine_tune_at: int | str) -> int:
    """The index in `base.layers` that `fineTuneAt` names."""
    if isinstance(fine_tune_at, int) or (isinstance(fine_tune_at, str) and fine_tune_at.isdigit()):
        index = int(fine_tune_at)
        if not 0 <= index < len(base.layers):
            raise InvalidSpecError(
                f"model.fineTuneAt {index} is out of range: the base has {len(base.layers)} layers"
            )
        return index
    for index, layer in enumerate(base.layers):
        if layer.name == fine_tune_at:
            return index
    sample = ", ".join(layer.name for layer in base.layers[-8:])
    raise InvalidSpecError(
        f"model.fineTuneAt {fine_tune_at!r} is not a layer of the base (its last layers: {sample})"
    )


def set_fine_tune(model: keras.Model, fine_tune_at: int | str) -> int:
    """Unfreeze the base from `fine_tune_at` on (BatchNorm stays frozen); returns trainable base layers."""
    base = find_base(model)
    start = resolve_layer_index(base, fine_tune_at)
    base.trainable = True
    trainable = 0
    for index, layer in enumerate(base.layers):
        train = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        trainable += int(train)
    for layer in model.layers:
        if layer is not base and layer.name != PREPROCESS_LAYER:
            layer.trainable = True
    return trainable


def loss_function(binary: bool) -> keras.losses.Loss:
    """Cross-entropy for one sigmoid unit or a softmax over integer labels (mean over the batch)."""
    if binary:
        return keras.losses.BinaryCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


def compile_model(
    model: keras.Model, optimizer: str, learning_rate: float, binary: bool, steps_per_execution: int = 1
) -> None:
    """Cross-entropy loss, accuracy, and the spec's optimizer.

    `steps_per_execution` > 1 runs that many batches per call of the traced step (a loop inside the
    graph): the same steps, without a round trip through Python for each, which is most of a step's
    time when the model is a small head on cached features.
    """
    optimizers = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    model.compile(
        optimizer=optimizers[optimizer](learning_rate=learning_rate),
        loss=loss_function(binary),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def output_classes(model: keras.Model) -> int:
    """How many classes a model predicts (2 for a single sigmoid unit)."""
    units = int(model.outputs[0].shape[-1])
    return 2 if units == 1 else units
