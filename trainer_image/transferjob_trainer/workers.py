"""Training across workers: which worker this is, TF_CONFIG, each worker's share of the data, and the
data-parallel epoch that keeps the workers' weights equal.

A TransferJob with `resources.workers: N > 1` runs as an Indexed Job of N pods behind a headless
Service (the operator's `jobs.build_job`). Each pod gets the group's addresses in
`TRANSFERJOB_WORKER_HOSTS` (`<job>-<i>.<service>:<port>`, in index order) and its own index in
`JOB_COMPLETION_INDEX` (set by the Job controller), and the trainer writes TF_CONFIG from them before
TensorFlow starts: the pod template is the same for every index, so no per-pod TF_CONFIG can be in it.

Why a loop of our own instead of `model.fit`: Keras 3 does not run `fit` under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585: its first-batch build reduces a per-replica
batch eagerly across workers and fails, and its metric reduction assumes tensors with a batch axis).
The loop below is the one TensorFlow's own multi-worker guide writes: each replica computes the loss
of its batch scaled by the global batch, the Keras optimizer all-reduces (sums) the gradients across
workers, and every worker applies the same update, so the weights stay equal without being sent.
Sums of loss, correct predictions and images are all-reduced once per step for the metrics.

Every collective needs every worker: a step that one worker skips hangs the others. So every worker
runs exactly `steps` training batches per epoch (its shard repeated, full batches) and `val_steps`
validation batches (its validation shard padded with weight-0 images).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transferjob_trainer.layout import Layout, Split

if TYPE_CHECKING:
    import tensorflow as tf

ENV_HOSTS = "TRANSFERJOB_WORKER_HOSTS"
"""The group's `host:port` addresses, comma-separated, in index order (the operator sets it)."""
ENV_INDEX = "JOB_COMPLETION_INDEX"
"""This pod's index in an Indexed Job (the Job controller sets it)."""


@dataclass(frozen=True)
class Worker:
    """One worker of a group of `len(hosts)`: index 0 is the chief, the only one that writes."""

    index: int
    hosts: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.hosts)

    @property
    def chief(self) -> bool:
        return self.index == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Worker | None:
        """This pod's place in its group, or None for a single-worker run (the usual case)."""
        env = os.environ if env is None else env
        hosts = tuple(h.strip() for h in env.get(ENV_HOSTS, "").split(",") if h.strip())
        if len(hosts) <= 1:
            return None
        raw = env.get(ENV_INDEX, "")
        if not raw.isdigit() or int(raw) >= len(hosts):
            raise ValueError(
                f"{ENV_INDEX}={raw!r} is not an index of the {len(hosts)} workers in {ENV_HOSTS}"
            )
        return cls(int(raw), hosts)

    def tf_config(self) -> str:
        """TF_CONFIG for this worker: the cluster of workers and its own task."""
        return json.dumps(
            {"cluster": {"worker": list(self.hosts)}, "task": {"type": "worker", "index": self.index}}
        )

    def shard(self, split: Split) -> Split:
        """Every `count`-th image from this worker's index. Files are listed class by class, so each
        shard holds every class in the data set's proportions."""
        return Split(
            split.name,
            split.folder,
            split.files[self.index :: self.count],
            split.labels[self.index :: self.count],
        )

    def shard_layout(self, layout: Layout) -> Layout:
        """The layout this worker trains and validates on: its shards of train and val; the whole test
        split for the chief (it tests alone, on every test image), none for the others (so no other
        worker reads, checks or, in feature extraction, runs the base on a test image)."""
        test = layout.test if self.chief else Split(layout.test.name, layout.test.folder, (), ())
        return Layout(
            layout.root,
            layout.classes,
            self.shard(layout.train),
            self.shard(layout.val),
            test,
            layout.skipped,
        )

    def steps(self, images: int, batch_size: int) -> int:
        """Batches per worker that cover `images` once across the group (at least one)."""
        return max(1, math.ceil(images / (batch_size * self.count)))

    def describe(self, layout: Layout, mine: Layout) -> str:
        return (
            f"worker {self.index} of {self.count} ({self.hosts[self.index]}): reads {len(mine.train)} of "
            f"{len(layout.train)} training and {len(mine.val)} of {len(layout.val)} validation images"
            + (f", and the {len(layout.test)} test images" if self.chief else "")
        )


@dataclass(frozen=True)
class Group:
    """A running worker group as `training.train` sees it: the strategy, this worker, and the data
    set's sizes before sharding (every worker must agree on the number of steps)."""

    strategy: Any
    worker: Worker
    train_images: int
    val_images: int


def start_strategy(worker: Worker) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy for `worker`, created before TensorFlow runs anything else (it sets
    up the collective ops when the runtime starts). Blocks until every worker is reachable."""
    os.environ["TF_CONFIG"] = worker.tf_config()
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
    )


def distributed_fitter(
    group: Group,
    model: Any,
    binary: bool,
    train: tf.data.Dataset | Callable[[int], tf.data.Dataset],
    val: tf.data.Dataset,
    batch_size: int,
    on_epoch: Callable[[int], None],
    on_batch: Callable[[int], None],
) -> Callable[[int], dict[str, float]]:
    """One epoch (`fit_one_epoch(epoch) -> logs`) of data-parallel training across the workers.

    `train` is this worker's shard of shuffled, batched inputs (images when fine-tuning, the base's
    features when training a head), repeated without end: every worker takes `steps` full batches an
    epoch, each epoch going on where the last stopped. Or a function of the epoch giving that epoch's
    batches (feature extraction: epoch e reads augmented view e mod views), repeated here. `val` is
    this worker's validation shard, batched, unrepeated. The logs are the same on every worker: loss
    and accuracy over all workers' training batches, and val_loss and val_accuracy over every
    validation image exactly once.
    """
    import keras
    import tensorflow as tf

    strategy, worker = group.strategy, group.worker
    steps = worker.steps(group.train_images, batch_size)
    val_steps = worker.steps(group.val_images, batch_size)
    global_batch = batch_size * worker.count
    no_shard = tf.data.Options()
    no_shard.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF

    def distributed(ds: tf.data.Dataset) -> Any:
        # Keras splits nothing here: each worker feeds its own batch, whole, to its one replica.
        return strategy.experimental_distribute_dataset(ds.with_options(no_shard))

    per_epoch = train if callable(train) else None
    sample = per_epoch(0) if per_epoch is not None else train
    assert isinstance(sample, tf.data.Dataset)
    image_shape = sample.element_spec[0].shape[1:]
    label_dtype = sample.element_spec[1].dtype

    def padded(ds: tf.data.Dataset) -> tf.data.Dataset:
        """The shard with weight 1, then weight-0 blank images up to exactly val_steps full batches."""
        weighted = ds.unbatch().map(lambda x, y: (x, y, tf.constant(1.0)))
        blank = (tf.zeros(image_shape, tf.float32), tf.zeros((), label_dtype), tf.constant(0.0))
        filler = tf.data.Dataset.from_tensors(blank).repeat()
        return (
            weighted.concatenate(filler).take(val_steps * batch_size).batch(batch_size).with_options(no_shard)
        )

    val_ds = strategy.experimental_distribute_dataset(padded(val))
    per_example = (
        keras.losses.BinaryCrossentropy(reduction=None)
        if binary
        else keras.losses.SparseCategoricalCrossentropy(reduction=None)
    )
    optimizer = model.optimizer

    def counts(y: tf.Tensor, p: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Weighted loss sum and weighted correct predictions of a batch."""
        if binary:
            yf = tf.reshape(tf.cast(y, tf.float32), [-1, 1])
            losses = per_example(yf, p)
            hit = tf.cast(tf.equal(tf.cast(p[:, 0] > 0.5, tf.int64), tf.cast(y, tf.int64)), tf.float32)
        else:
            losses = per_example(y, p)
            hit = tf.cast(tf.equal(tf.argmax(p, axis=-1), tf.cast(y, tf.int64)), tf.float32)
        return tf.reduce_sum(losses * w), tf.reduce_sum(hit * w)

    def train_replica(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        ones = tf.ones(tf.shape(x)[:1])
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            loss_sum, hits = counts(y, p, ones)
            loss = loss_sum / global_batch
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss_sum, hits, tf.reduce_sum(ones)

    def val_replica(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        p = model(x, training=False)
        loss_sum, hits = counts(y, p, w)
        return loss_sum, hits, tf.reduce_sum(w)

    def summed(values: Any) -> list[tf.Tensor]:
        return [strategy.reduce("SUM", v, axis=None) for v in values]

    @tf.function
    def train_step(batch: Any) -> list[tf.Tensor]:
        return summed(strategy.run(train_replica, args=batch))

    @tf.function
    def val_step(batch: Any) -> list[tf.Tensor]:
        return summed(strategy.run(val_replica, args=batch))

    shared_iter: Any = iter(distributed(sample)) if per_epoch is None else None

    def fit_one_epoch(epoch: int) -> dict[str, float]:
        on_epoch(epoch)
        train_iter = shared_iter if per_epoch is None else iter(distributed(per_epoch(epoch).repeat()))
        totals = [0.0, 0.0, 0.0]
        for _ in range(steps):
            values = train_step(next(train_iter))
            totals = [t + float(v) for t, v in zip(totals, values, strict=True)]
            on_batch(batch_size)
        vals = [0.0, 0.0, 0.0]
        for batch in val_ds:
            vals = [t + float(v) for t, v in zip(vals, val_step(batch), strict=True)]
        return {
            "loss": totals[0] / totals[2],
            "accuracy": totals[1] / totals[2],
            "val_loss": vals[0] / vals[2],
            "val_accuracy": vals[1] / vals[2],
        }

    return fit_one_epoch
