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

The features come in one of two ways (`features.FeatureSet` decides, by their size): held in memory as
tensors (`HeadTrainer`), which the epoch visits in an order that depends only on the seed and the
epoch number (`epoch_order`), or streamed from the feature shards on disk by `tf.data` pipelines
(`StreamingHeadTrainer`), each epoch's fixed by the seed and the epoch number. Either way a run resumed
from a checkpoint trains on the batches an uninterrupted run would have, and the features are handed to
the traced function as arguments, never captured in its graph: a new pipeline each epoch does not
retrace it. Streaming costs some 2 ms per batch on 2 CPU cores (iterating `tf.data` inside the traced
loop), gathering from memory a tenth of that, so small feature sets stay in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` (from 0) visits the `n` training vectors held in memory."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def predict_features(head: keras.Model, batches: tf.data.Dataset) -> np.ndarray:
    """The head's predictions (inference mode) for batches of (features, labels), eagerly, in order.

    Keras' `predict` would trace a function for a model this small; calling it directly is cheaper.
    """
    outputs = [np.asarray(head(x, training=False), dtype=np.float32) for x, _ in batches]
    return np.concatenate(outputs) if outputs else np.zeros((0, *head.outputs[0].shape[1:]), np.float32)


class _HeadSteps:
    """What both trainers do per batch: a training step with the compiled head's optimizer, a scoring
    step; each returns the batch's summed loss and its number of right predictions."""

    def __init__(self, head: keras.Model, binary: bool) -> None:
        if head.optimizer is None:
            raise ValueError("the head must be compiled: its optimizer is the one checkpoints save")
        self.head, self.binary = head, binary
        self.loss = loss_function(binary)
        if not head.optimizer.built:
            head.optimizer.build(head.trainable_variables)

    def _objective(self, labels: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
        loss = self.loss(labels, predictions)
        if self.head.losses:
            loss += tf.add_n([tf.cast(extra, loss.dtype) for extra in self.head.losses])
        return loss

    def _train_step(self, x: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        head, optimizer, variables = self.head, self.head.optimizer, self.head.trainable_variables
        with tf.GradientTape() as tape:
            predictions = head(x, training=True)
            loss = self._objective(labels, predictions)
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, variables), variables)
        size = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.cast(loss, tf.float32) * size, correct_predictions(labels, predictions, self.binary)

    def _score_step(self, x: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        predictions = self.head(x, training=False)
        size = tf.cast(tf.shape(labels)[0], tf.float32)
        loss = tf.cast(self._objective(labels, predictions), tf.float32) * size
        return loss, correct_predictions(labels, predictions, self.binary)


def _means(
    loss: tf.Tensor,
    correct: tf.Tensor,
    count: tf.Tensor,
    val_loss: tf.Tensor,
    val_correct: tf.Tensor,
    val_count: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Sums over samples to the means Keras reports (an empty set counts as one sample)."""
    count, val_count = tf.maximum(count, 1.0), tf.maximum(val_count, 1.0)
    return loss / count, correct / count, val_loss / val_count, val_correct / val_count


def _logs(values: tuple[tf.Tensor, ...]) -> dict[str, float]:
    return {name: float(value) for name, value in zip(_LOG_KEYS, values, strict=True)}


class HeadTrainer(_HeadSteps):
    """`head_trainer(epoch)` for a compiled head on features held in memory; epoch e trains on view e
    mod K, in `epoch_order(seed, e, n)`, then scores the validation features.

    `views` is [K, n, d] (K augmented views of the n training images, K = 1 without augmentation).
    """

    def __init__(
        self,
        head: keras.Model,
        views: Sequence[np.ndarray],
        train_labels: np.ndarray,
        val_features: np.ndarray,
        val_labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        binary: bool,
    ) -> None:
        super().__init__(head, binary)
        self.views = [tf.convert_to_tensor(view, tf.float32) for view in views]
        self.train_labels = tf.convert_to_tensor(train_labels)
        self.val_features = tf.convert_to_tensor(val_features, tf.float32)
        self.val_labels = tf.convert_to_tensor(val_labels)
        self.batch_size, self.seed = batch_size, seed
        self._epoch = tf.function(self._train_and_validate)

    def __call__(self, epoch: int) -> dict[str, float]:
        """Train one epoch and score the validation set; keys as in Keras' `History`."""
        order = epoch_order(self.seed, epoch, int(self.train_labels.shape[0]))
        view = self.views[epoch % len(self.views)]
        return _logs(
            self._epoch(view, self.train_labels, tf.constant(order), self.val_features, self.val_labels)
        )

    def _train_and_validate(
        self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, val_x: tf.Tensor, val_y: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        n = tf.shape(order)[0]
        loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
        for start in tf.range(0, n, self.batch_size):
            batch = order[start : start + self.batch_size]
            loss, right = self._train_step(tf.gather(x, batch), tf.gather(y, batch))
            loss_sum, correct = loss_sum + loss, correct + right
        m = tf.shape(val_y)[0]
        val_loss_sum, val_correct = tf.constant(0.0), tf.constant(0.0)
        for start in tf.range(0, m, SCORE_BATCH):
            loss, right = self._score_step(
                val_x[start : start + SCORE_BATCH], val_y[start : start + SCORE_BATCH]
            )
            val_loss_sum, val_correct = val_loss_sum + loss, val_correct + right
        return _means(
            loss_sum, correct, tf.cast(n, tf.float32), val_loss_sum, val_correct, tf.cast(m, tf.float32)
        )


class StreamingHeadTrainer(_HeadSteps):
    """`head_trainer(epoch)` for a compiled head on features streamed from disk: one epoch of
    `train_batches(epoch)`, then `val_batches`; both yield (features, labels) batches."""

    def __init__(
        self,
        head: keras.Model,
        train_batches: Callable[[int], tf.data.Dataset],
        val_batches: tf.data.Dataset,
        *,
        binary: bool,
    ) -> None:
        super().__init__(head, binary)
        self.train_batches, self.val_batches = train_batches, val_batches
        self._epoch = tf.function(self._train_and_validate)

    def __call__(self, epoch: int) -> dict[str, float]:
        """Train one epoch and score the validation set; keys as in Keras' `History`."""
        return _logs(self._epoch(self.train_batches(epoch), self.val_batches))

    def _train_and_validate(
        self, train: tf.data.Dataset, val: tf.data.Dataset
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        count, loss_sum, correct = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for x, labels in train:
            loss, right = self._train_step(x, labels)
            loss_sum, correct = loss_sum + loss, correct + right
            count += tf.cast(tf.shape(labels)[0], tf.float32)
        val_count, val_loss_sum, val_correct = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for x, labels in val:
            loss, right = self._score_step(x, labels)
            val_loss_sum, val_correct = val_loss_sum + loss, val_correct + right
            val_count += tf.cast(tf.shape(labels)[0], tf.float32)
        return _means(loss_sum, correct, count, val_loss_sum, val_correct, val_count)
