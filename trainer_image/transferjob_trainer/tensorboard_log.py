"""Learning curves for TensorBoard: each epoch's scalars, named as Keras' TensorBoard callback names them.

The trainer's own epoch loop writes them (see `training`: one `fit` call per epoch, no Keras callbacks
that keep state), after the epoch's metrics are final and before its checkpoint is committed.

They are Keras' own values, not the 4-significant-digit `EpochMetrics` that `.status` carries: a learning
curve is for comparing runs, and rounding flattens the differences it is read for.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from transferjob_trainer import fs


def _split_logs(logs: Mapping[str, float], learning_rate: float) -> dict[str, dict[str, float]]:
    """Keras' epoch logs as its TensorBoard callback files them: tag -> value, per writer folder.

    `val_loss` goes to `validation/epoch_loss`, everything else (and the learning rate in effect) to
    `train/epoch_<name>`. Non-finite values are kept: a diverged epoch should show on the curve.
    """
    split: dict[str, dict[str, float]] = {"train": {}, "validation": {}}
    for name, value in logs.items():
        if name.startswith("val_"):
            split["validation"][f"epoch_{name.removeprefix('val_')}"] = float(value)
        else:
            split["train"][f"epoch_{name}"] = float(value)
    split["train"]["epoch_learning_rate"] = float(learning_rate)
    return split


def _scalar_summary(values: Mapping[str, float]) -> bytes:
    """One serialized `Summary` of `simple_value` scalars.

    `simple_value` is what every TensorBoard reader takes as a scalar: the legacy `EventAccumulator`'s
    `Scalars()` reads only it (a tensor summary, which `tf.summary.scalar` and Keras write, lands in
    `Tensors()`), and the scalars plugin migrates it. No TensorFlow graph or `tf.function` is involved.
    """
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]
    )
    return summary.SerializeToString()


class TensorBoardLog:
    """Epoch scalars under tensorboard/{train,validation}, named like Keras' TensorBoard callback."""

    def __init__(self, folder: str | None) -> None:
        # TensorFlow writes event files to local paths (and gs://) only: for an object store they are
        # written to a local folder and uploaded after every epoch. Event file names are unique per
        # process, so the files of an earlier run of a resumed job stay beside the new ones.
        self._folder = folder
        self._local = folder if folder is None or fs.is_local(folder) else tempfile.mkdtemp(prefix="tb-")
        self._writers = (
            {
                "train": tf.summary.create_file_writer(fs.join(self._local, "train")),
                "validation": tf.summary.create_file_writer(fs.join(self._local, "validation")),
            }
            if self._local
            else {}
        )

    def write(self, epoch: int, logs: Mapping[str, float], learning_rate: float) -> None:
        """Record one epoch (numbered from 1, as `.status` numbers them) from Keras' logs."""
        if not self._writers:
            return
        values = _split_logs(logs, learning_rate)
        for split, writer in self._writers.items():
            if values[split]:
                with writer.as_default():
                    tf.summary.experimental.write_raw_pb(_scalar_summary(values[split]), step=epoch)
                writer.flush()
        if self._folder and self._local and self._local != self._folder:
            fs.put_tree(self._local, self._folder)
