"""Learning curves for TensorBoard: each epoch's scalars, named as Keras' TensorBoard callback names them.

The trainer's own epoch loop writes them (see `training`: one `fit` call per epoch, no Keras callbacks
that keep state), after the epoch's metrics are final and before its checkpoint is committed.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from transferjob.models import EpochMetrics
from transferjob_trainer import fs


def _scalar_metadata() -> summary_pb2.SummaryMetadata:
    """What TensorBoard's scalars plugin tags its summaries with (see tensorboard's `scalar_v2`)."""
    metadata = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
    metadata.plugin_data.plugin_name = "scalars"
    return metadata


_SCALAR = _scalar_metadata()


class TensorBoardLog:
    """Epoch scalars under tensorboard/{train,validation}, named like Keras' TensorBoard callback.

    Written with the low-level `tf.summary.write` and the scalars plugin's metadata, because the
    high-level `tf.summary.scalar` needs the tensorboard package, which TensorFlow no longer pulls in.
    """

    def __init__(self, folder: str | None) -> None:
        self._writers = (
            {
                "train": tf.summary.create_file_writer(fs.join(folder, "train")),
                "validation": tf.summary.create_file_writer(fs.join(folder, "validation")),
            }
            if folder
            else {}
        )

    def write(self, metrics: EpochMetrics) -> None:
        if not self._writers:
            return
        values = {
            "train": {
                "loss": metrics.loss,
                "accuracy": metrics.accuracy,
                "learning_rate": metrics.learning_rate,
            },
            "validation": {"loss": metrics.val_loss, "accuracy": metrics.val_accuracy},
        }
        for split, writer in self._writers.items():
            with writer.as_default():
                for name, value in values[split].items():
                    if value is not None:
                        tf.summary.write(
                            f"epoch_{name}",
                            tf.constant(value, tf.float32),
                            step=metrics.epoch,
                            metadata=_SCALAR,
                        )
            writer.flush()
