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

The training order of an epoch depends only on the seed and the epoch number (`epoch_order`), so a run
resumed from a checkpoint trains on the batches an uninterrupted run would have.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from transferjob_trainer.metrics import BINARY_THRESHOLD
from transferjob_trainer.modeling import loss_function

#: Validation and test features are scored in batches of this many vectors (the head is small).
SCORE_BATCH = 512
#: What `HeadTrainer` returns for an epoch, named as in Keras' `History`.
_LOG_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` (from 0) visits the `n` training vectors."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def correct_predictions(labels: tf.Tensor, predictions: tf.Tensor, binary: bool) -> tf.Tensor:
    """How many predictions are right: Keras' binary (above 0.5) or sparse categorical accuracy."""
    if binary:
        hits = tf.equal(tf.cast(predictions > BINARY_THRESHOLD, labels.dtype), labels)
    else:
        hits = tf.equal(tf.argmax(predictions, axis=-1, output_type=labels.dtype), labels)
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def predict_features(head: keras.Model, features: np.ndarray) -> np.ndarray:
    """The head's predictions (inference mode) for feature vectors, in eager batches.

    Keras' `predict` would trace a function for a model this small; calling it directly is cheaper.
    """
    batches = [
        np.asarray(head(features[i : i + SCORE_BATCH], training=False), dtype=np.float32)
        for i in range(0, len(features), SCORE_BATCH)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, *head.outputs[0].shape[1:]), np.float32)


class HeadTrainer:
    """`fit_one_epoch(epoch)` for a compiled head on cached features; epoch e trains on view e mod K.

    `views` is [K, n, d] (K augmented views of the n training images, K = 1 without augmentation).
    The arrays are handed to the traced function as arguments, never captured, so they do not end up
    inside the graph, whatever their size.
    """

    def __init__(
        self,
        head: keras.Model,
        views: np.ndarray,
        train_labels: np.ndarray,
        val_features: np.ndarray,
        val_labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        binary: bool,
    ) -> None:
        if head.optimizer is None:
            raise ValueError("the head must be compiled: its optimizer is the one checkpoints save")
        self.head = head
        self.views = [tf.convert_to_tensor(view, tf.float32) for view in views]
        self.train_labels = tf.convert_to_tensor(train_labels)
        self.val_features = tf.convert_to_tensor(val_features, tf.float32)
        self.val_labels = tf.convert_to_tensor(val_labels)
        self.batch_size = batch_size
        self.seed = seed
        self.binary = binary
        self.loss = loss_function(binary)
        if not head.optimizer.built:
            head.optimizer.build(head.trainable_variables)
        self._epoch = tf.function(self._train_and_validate)

    def __call__(self, epoch: int) -> dict[str, float]:
        """Train one epoch and score the validation set; keys as in Keras' `History`."""
        order = epoch_order(self.seed, epoch, int(self.train_labels.shape[0]))
        view = self.views[epoch % len(self.views)]
        values = self._epoch(view, self.train_labels, tf.constant(order), self.val_features, self.val_labels)
        return {name: float(value) for name, value in zip(_LOG_KEYS, values, strict=True)}

    def _objective(self, labels: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
        loss = self.loss(labels, predictions)
        if self.head.losses:
            loss += tf.add_n([tf.cast(extra, loss.dtype) for extra in self.head.losses])
        return loss

    def _train_and_validate(
        self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, val_x: tf.Tensor, val_y: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        head, optimizer, variables = self.head, self.head.optimizer, self.head.trainable_variables
        n = tf.shape(order)[0]
        loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
        for start in tf.range(0, n, self.batch_size):
            batch = order[start : start + self.batch_size]
            labels = tf.gather(y, batch)
            with tf.GradientTape() as tape:
                predictions = head(tf.gather(x, batch), training=True)
                loss = self._objective(labels, predictions)
                scaled = optimizer.scale_loss(loss)
            optimizer.apply(tape.gradient(scaled, variables), variables)
            loss_sum += tf.cast(loss, tf.float32) * tf.cast(tf.shape(batch)[0], tf.float32)
            correct += correct_predictions(labels, predictions, self.binary)
        count = tf.cast(tf.maximum(n, 1), tf.float32)

        m = tf.shape(val_y)[0]
        val_loss_sum, val_correct = tf.constant(0.0), tf.constant(0.0)
        for start in tf.range(0, m, SCORE_BATCH):
            labels = val_y[start : start + SCORE_BATCH]
            predictions = head(val_x[start : start + SCORE_BATCH], training=False)
            size = tf.cast(tf.shape(labels)[0], tf.float32)
            val_loss_sum += tf.cast(self._objective(labels, predictions), tf.float32) * size
            val_correct += correct_predictions(labels, predictions, self.binary)
        val_count = tf.cast(tf.maximum(m, 1), tf.float32)
        return loss_sum / count, correct / count, val_loss_sum / val_count, val_correct / val_count
