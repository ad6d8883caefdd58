"""Training a feature-extraction head on cached features: one traced call per epoch.

With the base's features cached, an epoch of the head is a few dozen small matrix products. Keras'
`fit` spends far more than that around them: about a second per run before the first batch (data
adapter, tracing the train and test functions, callbacks) and some 60 ms per epoch on 2 CPU cores
(a fresh data adapter and callback list per call, a validation loop). The trainer calls `fit` once per
epoch, because every epoch ends with early stopping, a checkpoint and a progress line, so those costs
are paid ten times. Here an epoch, every training batch and then the validation pass, is one call of
one function traced once.

It computes what `fit` computes: the compiled model's own optimizer (whose state the checkpoints save),
the same loss plus any layer losses, loss scaling under mixed precision, dropout active only while
training, and loss and accuracy averaged over samples (Keras' trackers weight each batch by its size).
A test checks the weights and metrics against Keras' `train_on_batch` on the same batches.

The batches come from `tf.data` pipelines (`features.FeatureSet`, streaming the feature shards from
disk), handed to the traced function as arguments: a new pipeline each epoch does not retrace it, and
no array of features is ever captured in, or held by, the function. Each epoch's pipeline is fixed by
the seed and the epoch number, so a run resumed from a checkpoint trains on the batches an
uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from transferjob_trainer.metrics import BINARY_THRESHOLD
from transferjob_trainer.modeling import loss_function

#: Validation and test features are scored in batches of this many vectors (the head is small).
SCORE_BATCH = 512
#: What `HeadTrainer` returns for an epoch, named as in Keras' `History`.
_LOG_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def correct_predictions(labels: tf.Tensor, predictions: tf.Tensor, binary: bool) -> tf.Tensor:
    """How many predictions are right: Keras' binary (above 0.5) or sparse categorical accuracy."""
    if binary:
        hits = tf.equal(tf.cast(predictions > BINARY_THRESHOLD, labels.dtype), labels)
    else:
        hits = tf.equal(tf.argmax(predictions, axis=-1, output_type=labels.dtype), labels)
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def predict_features(head: keras.Model, batches: tf.data.Dataset) -> np.ndarray:
    """The head's predictions (inference mode) for batches of (features, labels), eagerly, in order.

    Keras' `predict` would trace a function for a model this small; calling it directly is cheaper.
    """
    outputs = [np.asarray(head(x, training=False), dtype=np.float32) for x, _ in batches]
    return np.concatenate(outputs) if outputs else np.zeros((0, *head.outputs[0].shape[1:]), np.float32)


class HeadTrainer:
    """`head_trainer(epoch)` trains a compiled head for one epoch on `train_batches(epoch)`, then scores
    `val_batches`; both yield (features, labels) batches."""

    def __init__(
        self,
        head: keras.Model,
        train_batches: Callable[[int], tf.data.Dataset],
        val_batches: tf.data.Dataset,
        *,
        binary: bool,
    ) -> None:
        if head.optimizer is None:
            raise ValueError("the head must be compiled: its optimizer is the one checkpoints save")
        self.head = head
        self.train_batches, self.val_batches = train_batches, val_batches
        self.binary = binary
        self.loss = loss_function(binary)
        if not head.optimizer.built:
            head.optimizer.build(head.trainable_variables)
        self._epoch = tf.function(self._train_and_validate)

    def __call__(self, epoch: int) -> dict[str, float]:
        """Train one epoch and score the validation set; keys as in Keras' `History`."""
        values = self._epoch(self.train_batches(epoch), self.val_batches)
        return {name: float(value) for name, value in zip(_LOG_KEYS, values, strict=True)}

    def _objective(self, labels: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
        loss = self.loss(labels, predictions)
        if self.head.losses:
            loss += tf.add_n([tf.cast(extra, loss.dtype) for extra in self.head.losses])
        return loss

    def _train_and_validate(
        self, train: tf.data.Dataset, val: tf.data.Dataset
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        head, optimizer, variables = self.head, self.head.optimizer, self.head.trainable_variables
        count, loss_sum, correct = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for x, labels in train:
            with tf.GradientTape() as tape:
                predictions = head(x, training=True)
                loss = self._objective(labels, predictions)
                scaled = optimizer.scale_loss(loss)
            optimizer.apply(tape.gradient(scaled, variables), variables)
            size = tf.cast(tf.shape(labels)[0], tf.float32)
            loss_sum += tf.cast(loss, tf.float32) * size
            correct += correct_predictions(labels, predictions, self.binary)
            count += size

        val_count, val_loss_sum, val_correct = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for x, labels in val:
            predictions = head(x, training=False)
            size = tf.cast(tf.shape(labels)[0], tf.float32)
            val_loss_sum += tf.cast(self._objective(labels, predictions), tf.float32) * size
            val_correct += correct_predictions(labels, predictions, self.binary)
            val_count += size
        count, val_count = tf.maximum(count, 1.0), tf.maximum(val_count, 1.0)
        return loss_sum / count, correct / count, val_loss_sum / val_count, val_correct / val_count
