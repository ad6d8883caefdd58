"""tf.data input pipelines: parallel decode, in-memory caching when it fits, augmentation, prefetch.

Decoded images are cached as uint8 (a quarter of float32's memory) after resizing, so every later pass
(augmented views, fine-tuning epochs) skips file reads and decoding. Augmentation runs on whole batches
in the pipeline, on the training set only; the model itself carries no augmentation layers, so the
exported model is exactly what serving needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import tensorflow as tf

from transferjob.models import AugmentationSpec
from transferjob_trainer import fs
from transferjob_trainer.errors import InvalidDataError
from transferjob_trainer.layout import Split

AUTOTUNE = tf.data.AUTOTUNE
#: Share of the available memory the image cache may take when data.cache is auto.
CACHE_MEMORY_SHARE = 0.5

Augmenter = Callable[[tf.Tensor], tf.Tensor]


def available_memory_bytes() -> int:
    """Memory this process may still use: the smaller of MemAvailable and the cgroup's headroom."""
    candidates: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file, encoding="ascii") as lf, open(usage_file, encoding="ascii") as uf:
                limit_text = lf.read().strip()
                if limit_text != "max" and int(limit_text) < 1 << 60:
                    candidates.append(int(limit_text) - int(uf.read().strip()))
            break
        except (OSError, ValueError):
            continue
    return max(0, min(candidates)) if candidates else 1 << 31


def cached_image_bytes(n_images: int, size: int) -> int:
    """Memory of `n_images` decoded uint8 RGB images of `size` x `size`."""
    return n_images * size * size * 3


def should_cache(policy: str, needed: int, available: int) -> bool:
    """data.cache: memory always caches, none never, auto when it takes at most half the headroom."""
    if policy == "memory":
        return True
    if policy == "none":
        return False
    return needed <= available * CACHE_MEMORY_SHARE


def _label_tensor(labels: Sequence[int], binary: bool) -> tf.Tensor:
    if binary:
        return tf.constant(np.asarray(labels, dtype=np.float32).reshape(-1, 1))
    return tf.constant(np.asarray(labels, dtype=np.int32))


def _file_tensors(split: Split, binary: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """A split's paths and labels; typed, so that an empty split (a worker's test split) is strings too."""
    return tf.constant(list(split.files), tf.string), _label_tensor(split.labels, binary)


def decode_resize_float(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded bytes -> float32 [size, size, 3], resized but not yet rounded (see `decode_resize`)."""
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    image = tf.cond(
        tf.shape(image)[-1] < 3, lambda: tf.repeat(image[..., :1], 3, axis=-1), lambda: image[..., :3]
    )
    image.set_shape([None, None, 3])
    return tf.image.resize(image, [size, size], method="bilinear")


def decode_resize(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded bytes -> uint8 [size, size, 3], bilinear like `image_dataset_from_directory`.

    Decoded with the file's own channels, then made RGB here: TensorFlow's WebP decoder refuses to
    convert (an RGBA WebP with `channels=3` fails); grey (with or without alpha) is repeated to three
    channels and an alpha channel is dropped, as the PNG decoder does with `channels=3`.
    """
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    image = tf.cond(
        tf.shape(image)[-1] < 3, lambda: tf.repeat(image[..., :1], 3, axis=-1), lambda: image[..., :3]
    )
    image.set_shape([None, None, 3])
    image = tf.image.resize(image, [size, size], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def static_tuning(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds`, and every pipeline built on it, without tf.data's autotuning thread.

    With autotuning on, each iterator runs a model thread that wakes at growing intervals (10 ms,
    doubling, up to 60 s). Deleting an iterator sometimes blocks until that thread's next wake-up
    (seen with TensorFlow 2.21: `RootDataset::Iterator`'s destructor waiting on it), so a pass that
    ends at 5.5 s can return at 10.2 s, and a `fit` epoch can end up to a whole interval late. Our
    pipelines are simple (decode, cache, shuffle, batch, cast, augment, prefetch), so fixed settings
    do as well: `AUTOTUNE` parallelism then means TensorFlow's default (the size of its thread pool,
    i.e. the cores it may use) and prefetch buffers still grow on demand. Measured on 2 cores: the
    feature pass no longer stalls, and epochs of a small CNN on the cached digits took 3.1-3.3 s
    against 3.4-4.1 s (5.1 s with a stall) with autotuning.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def image_dataset(split: Split, size: int, *, binary: bool, cache: bool) -> tf.data.Dataset:
    """(uint8 image, label) pairs in file order, decoded in parallel, cached in memory when asked."""
    ds = tf.data.Dataset.from_tensor_slices(_file_tensors(split, binary))
    ds = ds.map(
        lambda path, label: (decode_resize(tf.io.read_file(path), size), label), num_parallel_calls=AUTOTUNE
    )
    if cache:
        ds = ds.cache()
    return static_tuning(ds)


class CacheFill:
    """Fills the in-memory caches of image datasets (see `image_dataset`) in a background thread.

    The first pass over a cached dataset reads and decodes every file. Started before the model is
    built, that pass runs on the cores which model construction (single-threaded Python) leaves idle,
    instead of competing with the base's forward pass for them later. Later passes over the datasets,
    or over datasets built on them, read the filled caches.

    `wait()` before iterating any of the datasets again: a tf.data memory cache must not be filled by
    two iterators at once. It re-raises what the pass raised (a file TensorFlow cannot decode), so
    call it where `decode_errors_as_invalid_data` can name the file.
    """

    def __init__(self, datasets: Sequence[tf.data.Dataset], batch: int = 256) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._fill, args=(datasets, batch), name="image-cache-fill", daemon=True
        )
        self._thread.start()

    def _fill(self, datasets: Sequence[tf.data.Dataset], batch: int) -> None:
        try:
            for ds in datasets:
                for _ in ds.batch(batch):
                    pass
        except BaseException as error:  # handed to the thread that waits
            self._error = error

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def to_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 pixel values 0-255, whole numbers: uint8 images cast; resized floats (`shuffled_images`
    without a cache) rounded and clipped here, a batch at a time, to exactly what the uint8 would hold."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32), labels
    return tf.clip_by_value(tf.round(images), 0.0, 255.0), labels


def shuffled_images(
    split: Split, size: int, *, binary: bool, seed: int, cached: tf.data.Dataset | None
) -> tf.data.Dataset:
    """The training images in a new order every epoch, holding no more decoded images than the cache does.

    Not cached (`data.cache: none`, or `auto` when the images do not fit): the file list (a path and a
    label per image, a few bytes each) is shuffled, then decoded in parallel in that order, so memory
    is bounded by the batch and the prefetch, not by the data set. Shuffling the decoded images instead
    would hold every one of them in the shuffle buffer, whatever `data.cache` says.

    Cached: the cache holds every image anyway, and shuffling its elements reorders references to the
    cached tensors, no copies (measured with TensorFlow 2.21: 3,000 cached 224x224 images, RSS unchanged
    by two shuffled epochs).
    """
    n = len(split.files)
    if cached is not None:
        return cached.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    files = tf.data.Dataset.from_tensor_slices(_file_tensors(split, binary))
    ds = files.shuffle(n, seed=seed, reshuffle_each_iteration=True).map(
        lambda path, label: (decode_resize_float(tf.io.read_file(path), size), label),
        num_parallel_calls=AUTOTUNE,
    )
    return static_tuning(ds)


def training_batches(images: tf.data.Dataset, batch_size: int, augment: Augmenter | None) -> tf.data.Dataset:
    """Batched, augmented float32 batches of (already shuffled, see `shuffled_images`) images, prefetched."""
    ds = images.batch(batch_size).map(to_float, AUTOTUNE)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def eval_batches(images: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Batched float32 images in file order, prefetched."""
    return images.batch(batch_size).map(to_float, AUTOTUNE).prefetch(AUTOTUNE)


def random_crop_resize(images: tf.Tensor, fraction: float, seed: int) -> tf.Tensor:
    """Cut up to `fraction` off each side of every image (independently) and resize back."""
    shape = tf.shape(images)
    batch = shape[0]
    margins = tf.random.uniform([batch, 4], 0.0, fraction, seed=seed)
    boxes = tf.stack([margins[:, 0], margins[:, 1], 1.0 - margins[:, 2], 1.0 - margins[:, 3]], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), crop_size=[shape[1], shape[2]])


def augments(spec: AugmentationSpec) -> bool:
    """Whether the spec changes images at all (enabled, with at least one transformation)."""
    transforms = (spec.flip != "none", spec.rotation > 0, spec.zoom > 0, spec.translation > 0, spec.crop > 0)
    return spec.enabled and any(transforms)


def build_augmenter(spec: AugmentationSpec, seed: int) -> Augmenter | None:
    """The spec's random flip/rotation/zoom/translation/crop as one batch function, or None when off."""
    import keras

    if not augments(spec):
        return None
    layers: list[keras.layers.Layer] = []
    if spec.flip != "none":
        layers.append(keras.layers.RandomFlip(spec.flip, seed=seed))
    if spec.rotation > 0:
        layers.append(keras.layers.RandomRotation(spec.rotation, seed=seed + 1))
    if spec.zoom > 0:
        layers.append(keras.layers.RandomZoom((-spec.zoom, spec.zoom), seed=seed + 2))
    if spec.translation > 0:
        layers.append(keras.layers.RandomTranslation(spec.translation, spec.translation, seed=seed + 3))
    crop = spec.crop

    def augment(images: tf.Tensor) -> tf.Tensor:
        for layer in layers:
            images = layer(images, training=True)
        if crop > 0:
            images = random_crop_resize(images, crop, seed + 4)
        return images

    return augment


def find_undecodable(paths: Sequence[str]) -> list[tuple[str, str]]:
    """Files TensorFlow itself fails to decode, with its message (the slow, exact check)."""
    bad = []
    for path in paths:
        try:
            tf.io.decode_image(tf.constant(fs.read_bytes(path)), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            bad.append((path, error.message.splitlines()[0]))
    return bad


def is_decode_failure(error: BaseException) -> bool:
    """Whether a pipeline error comes from an image decoder (and is worth the per-file re-check)."""
    text = str(error).lower()
    return any(word in text for word in ("decode", "image", "png", "jpeg", "gif", "bmp"))


@contextmanager
def decode_errors_as_invalid_data(splits: Sequence[Split]) -> Iterator[None]:
    """Map a decode failure inside a pipeline to InvalidDataError naming the file.

    The header check in `layout.check_images` catches nearly every broken file; this is the net for
    files Pillow accepts but TensorFlow's decoders reject. The pipeline's error does not say which file
    failed, so the splits are re-checked one file at a time to name it.
    """
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        if not is_decode_failure(error):
            raise
        bad = [item for split in splits for item in find_undecodable(split.files)]
        if not bad:
            raise
        listed = "; ".join(f"{p}: {why}" for p, why in bad[:5])
        raise InvalidDataError(f"{len(bad)} image file(s) TensorFlow cannot decode: {listed}") from error
