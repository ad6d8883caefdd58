"""Feature extraction's one expensive pass: the frozen base's pooled features of every image.

The base is frozen and always runs in inference mode, so its output for an image never changes: the
trainer computes it once per image (without augmentation), or once per augmented view (`cachedViews`
views of every training image, each a fresh random augmentation), and the head then trains on those
arrays for every epoch. Validation and test features are computed in the same pass. Which function
runs the base (a traced `inference` function, or Keras' `predict` across replicas) is the caller's
choice; this module only decides what goes through it, and in how few passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from transferjob_trainer.pipeline import Augmenter
from transferjob_trainer.report import log

#: Runs the base over a dataset of float32 image batches, calling back with each batch's size; returns
#: the features of every image, in order.
Extract = Callable[[tf.data.Dataset, Callable[[int], None]], np.ndarray]


def compute_features(
    extract: Extract,
    images: tf.data.Dataset,
    views: int,
    augment: Augmenter | None,
    batch_size: int,
    on_batch: Callable[[int], None],
) -> np.ndarray:
    """Pooled base features of every image: [views, n, d]; each view a fresh random augmentation."""
    out = []
    for view in range(views):
        ds = images.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), tf.data.AUTOTUNE)
        if augment is not None:
            ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        started = time.perf_counter()
        features = extract(ds.map(lambda x, y: x).prefetch(tf.data.AUTOTUNE), on_batch)
        log(f"features view {view + 1}/{views}: {features.shape} in {time.perf_counter() - started:.1f}s")
        out.append(np.asarray(features, dtype=np.float32))
    return np.stack(out)


def feature_cache(
    extract: Extract,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    test: tf.data.Dataset,
    views: int,
    augment: Augmenter | None,
    batch_size: int,
    on_batch: Callable[[int], None] = lambda _: None,
) -> dict[str, np.ndarray]:
    """Training views, validation and test features; unaugmented splits go through the base in one pass.

    `on_batch(images)` is called after every batch, for progress reports.
    """
    n_train = int(train.cardinality())
    n_val = int(val.cardinality())
    if augment is None:
        both = compute_features(
            extract, train.concatenate(val).concatenate(test), 1, None, batch_size, on_batch
        )[0]
        train_views = both[None, :n_train]
        rest = both[n_train:]
    else:
        train_views = compute_features(extract, train, views, augment, batch_size, on_batch)
        rest = compute_features(extract, val.concatenate(test), 1, None, batch_size, on_batch)[0]
    return {"train": train_views, "val": rest[:n_val], "test": rest[n_val:]}
