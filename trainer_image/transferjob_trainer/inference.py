"""The model's forward pass as traced functions, each traced once per run and reused.

The feature pass, fine-tuning's test pass and the SavedModel's serving signature all run the network
in inference mode. Tracing it is a large part of a short job's fixed cost, so each trace made here is
made once and handed on: the feature extractor's to the serving signature (`serving_function`), the
serving signature's to the export (`export.write_saved_model`). With several replicas the trainer uses
Keras' `predict` instead, which spreads the batches over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeAlias

import keras
import numpy as np
import tensorflow as tf

from transferjob_trainer import modeling

Inference: TypeAlias = tf.types.experimental.PolymorphicFunction


def inference_function(model: keras.Model) -> Inference:
    """`model(images, training=False)` as one traced function over float32 image batches of any size.

    Traced once, on the first call; the SavedModel export reuses the trace (see `export.write_saved_model`),
    so the network is not traced a second time for serving.
    """
    signature = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name=modeling.INPUT_NAME)
    return tf.function(lambda images: model(images, training=False), input_signature=[signature])


def serving_function(extract: Inference, head: keras.Model) -> Inference:
    """The end-to-end model's computation as head(extract(images)): the extractor's trace is reused.

    The extractor and the head are the end-to-end model's own layers (`modeling.split_model`), so this
    is `model(images, training=False)`; a test checks the exported SavedModel against the .keras model.
    """
    signature = extract.input_signature[0]
    return tf.function(lambda images: head(extract(images), training=False), input_signature=[signature])


def inference_batches(
    fn: Inference, batches: tf.data.Dataset, on_batch: Callable[[int], None] | None = None
) -> Iterator[np.ndarray]:
    """`fn` over every batch of images, one float32 output at a time; `on_batch(images)` after each.

    The feature pass writes each batch's features away as it comes, so no pass holds more than a batch.
    """
    for batch in batches:
        output = np.asarray(fn(batch), dtype=np.float32)
        if on_batch is not None:
            on_batch(len(output))
        yield output


def run_inference(
    fn: Inference, batches: tf.data.Dataset, on_batch: Callable[[int], None] | None = None
) -> np.ndarray:
    """`fn` over every batch of images, outputs concatenated as float32; `on_batch(images)` after each."""
    return np.concatenate(list(inference_batches(fn, batches, on_batch)))
