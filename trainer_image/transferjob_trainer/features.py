"""Feature extraction's one expensive pass, written to disk in shards as it runs, and read back streaming.

The base is frozen and always runs in inference mode, so its output for an image never changes: the
trainer computes it once per image (without augmentation), or once per augmented view (`cachedViews`
views of every training image, each a fresh random augmentation), and the head then trains on those
vectors for every epoch. Validation and test features are computed in the same pass.

**On disk.** The features go to shards of at most `SHARD_IMAGES` images each: `train-v<view>-NNNNN.npy`,
`val-NNNNN.npy`, `test-NNNNN.npy`, each a NumPy `.npy` file of records (`x`: the float32 feature vector,
`y`: the label), written a batch at a time while the pass runs. Nothing holds more than a batch of
features in memory, and a killed pass loses at most the shards it was writing. `.npy` rather than
TFRecord: the records have a fixed length, so `tf.data.FixedLengthRecordDataset` streams them with no
parsing (the header's length is read from each file), while NumPy reads or memory-maps a shard for
anyone inspecting it; TFRecord would frame and parse every vector and is opaque to NumPy.

A shard is written to a temporary name and renamed when its last record is written and flushed to
disk, so a shard under its final name is complete. `manifest.json` records what the shards were computed
from (the run's fingerprint, image size, the data split and its digest, the training images' order,
the number of views, the shard size) and the base (its name, weights, feature shape and a digest of the
extractor's weights): a cache whose manifest differs is deleted, never reused. A restarted run keeps the
finished shards and computes only the missing ones (augmented views of the recomputed shards are new
random draws: the augmentation's random state is not checkpointed).

**Where.** With a local output (a path, a hostPath or a PVC mount) the shards live in
`<output>/checkpoints/features/`, on the volume that survives the pod. With an object-store output the
head could not stream them from the store (TensorFlow reads no `s3://`), so they are written to local
scratch, `$TMPDIR/transferjob-features/<hash of the location>/` (in a pod the scratch `emptyDir`), and
each finished shard is uploaded to `<output>/checkpoints/features/` as it completes: a pod restarted on
another node downloads the finished shards instead of computing them again.

**Reading.** Features the head reads that take at most `IN_MEMORY_BYTES` are read into arrays
(`FeatureSet.arrays`, for `head.HeadTrainer`). Larger ones are streamed (`FeatureSet.train_batches`):
the training images are written in one seeded random order (`train_order`), so every shard is a random
sample of the classes (the files are listed class by class), and an epoch reads its view's shards in an
order fixed by (seed, epoch), `READ_SHARDS` at a time, interleaved record by record, through a shuffle
buffer of at most `SHUFFLE_BUFFER_BYTES`: memory is bounded by that buffer, whatever the data's size.
Validation and test features are read in file order.

Which function runs the base (a traced `inference` function, or Keras' `predict` across replicas) is
the caller's choice; this module decides what goes through it, and in how few passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import keras
import numpy as np
import tensorflow as tf

from transferjob_trainer import fs
from transferjob_trainer.layout import Split
from transferjob_trainer.pipeline import Augmenter, image_dataset, static_tuning
from transferjob_trainer.report import log

#: Bump when the shard format changes: a manifest of another format is never reused.
FORMAT = 1
#: Images per shard: what a killed pass can lose, and the unit a restart reuses (20 MB of MobileNetV2's
#: 1280 features). `TJ_FEATURE_SHARD_IMAGES` overrides it (tests use small shards).
SHARD_IMAGES = 4096
#: Shards an epoch reads at once, interleaved record by record.
READ_SHARDS = 4
#: The training shuffle buffer's size: 32 MiB of records (6,500 of MobileNetV2's vectors).
SHUFFLE_BUFFER_BYTES = 32 << 20
#: Features the head reads (every training view and validation) up to this size are held in memory:
#: 64 MiB, 13,000 of MobileNetV2's vectors (see `head`: gathering is faster than streaming).
#: `TJ_FEATURES_IN_MEMORY_BYTES` overrides it (tests stream small sets).
IN_MEMORY_BYTES = 64 << 20
#: The folder beside the checkpoints, and the manifest in it.
FOLDER = "features"
MANIFEST = "manifest.json"
#: A killed run's partly written shard; removed when the cache is opened again.
TMP_PREFIX = ".tmp-"

#: Runs the base over a dataset of float32 image batches, calling back with each batch's size; yields
#: the features of the images in order, in arrays of any number of rows.
Extract = Callable[[tf.data.Dataset, Callable[[int], None]], Iterable[np.ndarray]]


def shard_images() -> int:
    """`TJ_FEATURE_SHARD_IMAGES`, else `SHARD_IMAGES`."""
    return max(1, int(os.environ.get("TJ_FEATURE_SHARD_IMAGES", SHARD_IMAGES)))


def in_memory_bytes() -> int:
    """`TJ_FEATURES_IN_MEMORY_BYTES`, else `IN_MEMORY_BYTES`."""
    return int(os.environ.get("TJ_FEATURES_IN_MEMORY_BYTES", IN_MEMORY_BYTES))


def train_order(n: int, seed: int) -> np.ndarray:
    """The order in which the training images' features are written: seeded, so a restart agrees."""
    return np.random.default_rng([seed, n]).permutation(n)


def reorder(split: Split, order: np.ndarray) -> Split:
    """`split` with its files (and labels) in `order`."""
    return Split(
        split.name,
        split.folder,
        tuple(split.files[i] for i in order),
        tuple(split.labels[i] for i in order),
    )


def record_dtype(dim: int) -> np.dtype:
    """One shard record: a feature vector and its label (a class index, exact in float32)."""
    return np.dtype([("x", "<f4", (dim,)), ("y", "<f4")])


def weights_digest(model: keras.Model) -> str:
    """A digest of a model's weights (in order: dtypes, shapes, values), one variable in memory at a time.

    Names are left out: Keras numbers automatically named layers per process.
    """
    h = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        h.update(f"{value.dtype}:{value.shape}\n".encode())
        h.update(value.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    """Images `start` to `start + images` (in the split's write order) of one part of the cache."""

    part: str  # train-v<view>, val or test
    index: int
    start: int
    images: int

    @property
    def name(self) -> str:
        return f"{self.part}-{self.index:05d}.npy"

    @property
    def split(self) -> str:
        return self.part.split("-")[0]


def plan_shards(counts: dict[str, int], views: int, per_shard: int) -> list[Shard]:
    """Every shard of a cache: the training views, then validation, then test (the pass's order)."""
    parts = [(f"train-v{view}", counts["train"]) for view in range(views)]
    parts += [("val", counts["val"]), ("test", counts["test"])]
    return [
        Shard(part, index, start, min(per_shard, n - start))
        for part, n in parts
        for index, start in enumerate(range(0, n, per_shard))
    ]


def shard_data_offset(path: str, images: int) -> int | None:
    """Where a finished shard's records start, or None when the file is not a whole shard of `images`."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            header = (
                np.lib.format.read_array_header_1_0(handle)
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0(handle)
            )
            offset = handle.tell()
        shape, _fortran, dtype = header
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return None
    if shape != (images,) or dtype.names != ("x", "y") or size != offset + images * dtype.itemsize:
        return None
    return offset


class ShardWriter:
    """Writes feature batches, in order, into `shards`: each to a temporary file, renamed when full.

    `labels(shard)` gives a shard's labels; `finished(shard, path)` is called once a shard is complete
    under its final name.
    """

    def __init__(
        self,
        folder: str,
        shards: Sequence[Shard],
        labels: Callable[[Shard], np.ndarray],
        finished: Callable[[Shard, str], None],
    ) -> None:
        self.folder, self.labels, self.finished = folder, labels, finished
        self._pending = list(reversed(shards))
        self._shard: Shard | None = None
        self._handle: BinaryIO | None = None
        self._tmp = ""
        self._written = 0
        self._shard_labels = np.zeros(0, np.float32)

    def write(self, features: np.ndarray) -> None:
        features = features.reshape(len(features), -1)
        while len(features):
            if self._shard is None:
                self._open(features.shape[1])
            assert self._shard is not None and self._handle is not None
            take = min(len(features), self._shard.images - self._written)
            records = np.empty(take, record_dtype(features.shape[1]))
            records["x"] = features[:take]
            records["y"] = self._shard_labels[self._written : self._written + take]
            self._handle.write(records.data)
            self._written += take
            features = features[take:]
            if self._written == self._shard.images:
                self._close()

    def _open(self, dim: int) -> None:
        if not self._pending:
            raise ValueError("the base produced more features than there are images")
        shard = self._pending.pop()
        handle, self._tmp = _temporary(self.folder, shard.name)
        header = {"descr": record_dtype(dim).descr, "fortran_order": False, "shape": (shard.images,)}
        np.lib.format.write_array_header_1_0(handle, header)
        self._shard, self._handle, self._written = shard, handle, 0
        self._shard_labels = np.asarray(self.labels(shard), dtype=np.float32)

    def _close(self) -> None:
        assert self._shard is not None and self._handle is not None
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        path = os.path.join(self.folder, self._shard.name)
        os.replace(self._tmp, path)
        shard, self._shard, self._handle = self._shard, None, None
        self.finished(shard, path)

    def abandon(self) -> None:
        """Remove the shard being written (a failed pass leaves no partial file behind)."""
        if self._handle is not None:
            self._handle.close()
            os.remove(self._tmp)
            self._shard, self._handle = None, None

    def check_done(self) -> None:
        if self._pending or self._shard is not None:
            raise ValueError("the base produced fewer features than there are images")


def _temporary(folder: str, name: str) -> tuple[BinaryIO, str]:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}{name}-")
    return os.fdopen(fd, "wb"), tmp


@dataclass(frozen=True)
class _Range:
    """Consecutive images of one part that go through the base together."""

    part: str
    start: int
    end: int


def _ranges(shards: Sequence[Shard]) -> list[_Range]:
    ranges: list[_Range] = []
    for shard in shards:
        last = ranges[-1] if ranges else None
        if last is not None and last.part == shard.part and last.end == shard.start:
            ranges[-1] = _Range(last.part, last.start, shard.start + shard.images)
        else:
            ranges.append(_Range(shard.part, shard.start, shard.start + shard.images))
    return ranges


@dataclass(frozen=True)
class Source:
    """A split in the order its features are written, and its image dataset in that order."""

    split: Split
    images: tf.data.Dataset


def image_batches(
    shards: Sequence[Shard],
    sources: dict[str, Source],
    image_size: int,
    augment: Augmenter | None,
    batch_size: int,
) -> tf.data.Dataset:
    """Float32 image batches of `shards`' images, in order; training views augmented when asked.

    Unaugmented images of consecutive parts are batched together, so one pass over train, val and test
    fills every batch. A whole split reads the open dataset (its in-memory cache, when there is one); a
    restart's partial range decodes just its files.
    """
    batched: list[tf.data.Dataset] = []
    plain: list[tf.data.Dataset] = []

    def flush() -> None:
        if plain:
            joined = plain[0]
            for ds in plain[1:]:
                joined = joined.concatenate(ds)
            batched.append(joined.batch(batch_size).map(_to_float, tf.data.AUTOTUNE))
            plain.clear()

    for r in _ranges(shards):
        source = sources[r.part.split("-")[0]]
        if r.start == 0 and r.end == len(source.split):
            images = source.images
        else:
            part = Split(
                source.split.name,
                source.split.folder,
                source.split.files[r.start : r.end],
                source.split.labels[r.start : r.end],
            )
            images = image_dataset(part, image_size, binary=False, cache=False)
        images = images.map(lambda x, y: x)  # labels go to the shards from the split, not the pipeline
        if augment is None or not r.part.startswith("train"):
            plain.append(images)
            continue
        flush()
        batched.append(
            images.batch(batch_size)
            .map(_to_float, tf.data.AUTOTUNE)
            .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        )
    flush()
    stream = batched[0]
    for ds in batched[1:]:
        stream = stream.concatenate(ds)
    return static_tuning(stream.prefetch(tf.data.AUTOTUNE))


def _to_float(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32)


class FeatureCache:
    """The shard folder of one run: which shards are finished, the pass that adds the missing ones, and
    the reader (`feature_set`). See the module's docstring for the layout and the rules."""

    def __init__(self, local: str, remote: str | None, inputs: dict[str, Any], shards: list[Shard]) -> None:
        self.local, self.remote, self.inputs, self.shards = local, remote, inputs, shards
        self.base: dict[str, Any] | None = None
        self._remote_names: set[str] = set()

    @classmethod
    def open(
        cls, checkpoints: str, inputs: dict[str, Any], counts: dict[str, int], views: int
    ) -> FeatureCache:
        """The cache beside the checkpoints folder `checkpoints`; a stale one (other inputs) is deleted.

        `inputs` is what the features depend on apart from the base (checked once it is built, see
        `bind_base`); `counts` the images per split.
        """
        per_shard = shard_images()
        inputs = {**inputs, "format": FORMAT, "shardImages": per_shard, "views": views, "splits": counts}
        folder = fs.join(checkpoints, FOLDER)
        if fs.is_local(folder):
            cache = cls(folder, None, inputs, plan_shards(counts, views, per_shard))
        else:
            key = hashlib.sha256(folder.encode()).hexdigest()[:16]
            local = os.path.join(tempfile.gettempdir(), "transferjob-features", key)
            cache = cls(local, folder, inputs, plan_shards(counts, views, per_shard))
        cache._drop_stale()
        return cache

    def _manifest(self, folder: str) -> dict[str, Any] | None:
        """The manifest in `folder`, or None where there is none (or an unreadable one)."""
        path = fs.join(folder, MANIFEST)
        if not fs.exists(path):
            return None
        try:
            manifest = json.loads(fs.read_text(path))
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _drop_stale(self) -> None:
        """Delete shards computed from other inputs; with an object-store output the store decides (the
        local folder only stages its shards), and a local copy of another base's shards goes too."""
        local = self._manifest(self.local)
        if local is not None and local.get("inputs") != self.inputs:
            local = None
        if self.remote is None:
            self.base = local.get("base") if local else None
        else:
            remote = self._manifest(self.remote)
            if remote is None or remote.get("inputs") != self.inputs:
                fs.remove(self.remote)
                remote = None
            else:
                self._remote_names = set(fs.listdir(self.remote))
            self.base = remote.get("base") if remote else None
            if local is not None and (remote is None or local.get("base") != self.base):
                local = None
        if local is None:
            shutil.rmtree(self.local, ignore_errors=True)
        os.makedirs(self.local, exist_ok=True)
        for name in os.listdir(self.local):
            if name.startswith(TMP_PREFIX):
                os.remove(os.path.join(self.local, name))

    def path(self, shard: Shard) -> str:
        return os.path.join(self.local, shard.name)

    def finished(self, shard: Shard) -> bool:
        """Complete here, or (with an object-store output) in the store."""
        if shard.name in self._remote_names:
            return True
        return shard_data_offset(self.path(shard), shard.images) is not None

    def needed(self, parts: Sequence[str]) -> list[Shard]:
        return [s for s in self.shards if s.split in parts]

    def missing(self, parts: Sequence[str]) -> list[Shard]:
        return [s for s in self.needed(parts) if not self.finished(s)]

    def bind_base(self, base: dict[str, Any]) -> None:
        """Check the built base against the manifest's (a different one makes every shard stale) and
        write the manifest before the first shard, so no shard exists without one that describes it."""
        text = json.dumps({"inputs": self.inputs, "base": base}, indent=1)
        if self.base != base:
            if self.base is not None:
                log("features: the base differs from the one the cached features came from; recomputing")
            shutil.rmtree(self.local, ignore_errors=True)
            os.makedirs(self.local)
            if self.remote is not None:
                fs.remove(self.remote)
                fs.write_text(fs.join(self.remote, MANIFEST), text)
            self.base, self._remote_names = base, set()
        if not os.path.exists(os.path.join(self.local, MANIFEST)):
            fs.write_text(os.path.join(self.local, MANIFEST), text)

    def compute(
        self,
        shards: Sequence[Shard],
        sources: dict[str, Source],
        extract: Extract,
        one_pass: bool,
        *,
        image_size: int,
        augment: Augmenter | None,
        batch_size: int,
        on_batch: Callable[[int], None],
    ) -> None:
        """The base's features of `shards`' images, written shard by shard (uploaded when remote).

        `one_pass`: `extract` streams (one pass over every image); otherwise it returns all the features
        of the dataset it is given (Keras' `predict`), so it is called once per shard.
        """
        labels = {name: np.asarray(source.split.labels, np.float32) for name, source in sources.items()}
        writer = ShardWriter(
            self.local,
            shards,
            lambda shard: labels[shard.split][shard.start : shard.start + shard.images],
            self._finished,
        )
        started = time.perf_counter()
        try:
            for group in [list(shards)] if one_pass else [[shard] for shard in shards]:
                batches = image_batches(group, sources, image_size, augment, batch_size)
                for features in extract(batches, on_batch):
                    writer.write(np.asarray(features, dtype=np.float32))
            writer.check_done()
        finally:
            writer.abandon()
        images = sum(s.images for s in shards)
        parts = sorted({s.part for s in shards})
        log(
            f"features: {images} images ({', '.join(parts)}) in {len(shards)} shard(s) in "
            f"{time.perf_counter() - started:.1f}s, in {self.local}"
        )

    def _finished(self, shard: Shard, path: str) -> None:
        if self.remote is not None:
            fs.upload_file(path, fs.join(self.remote, shard.name))

    def feature_set(self, parts: Sequence[str], binary: bool) -> FeatureSet:
        """The finished shards of `parts`, local (downloaded from the store when only there)."""
        assert self.base is not None, "bind_base first"
        shards = self.needed(parts)
        for shard in shards:
            if shard_data_offset(self.path(shard), shard.images) is None:
                assert self.remote is not None and shard.name in self._remote_names, shard.name
                fs.download_file(fs.join(self.remote, shard.name), self.path(shard))
        offsets = {s.name: shard_data_offset(self.path(s), s.images) for s in shards}
        located = [(s, self.path(s), offsets[s.name]) for s in shards]
        return FeatureSet(located, int(np.prod(self.base["featureShape"])), binary)


class FeatureSet:
    """Finished shards read back as `tf.data` pipelines of (features, labels) batches, or, when they are
    small (`fits_in_memory`), as arrays."""

    def __init__(self, shards: Sequence[tuple[Shard, str, int | None]], dim: int, binary: bool) -> None:
        self.dim, self.binary = dim, binary
        self.record_bytes = record_dtype(dim).itemsize
        self._parts: dict[str, list[tuple[str, int, int]]] = {}
        for shard, path, offset in shards:
            assert offset is not None, path
            self._parts.setdefault(shard.part, []).append((path, offset, shard.images))
        self.views = sum(1 for part in self._parts if part.startswith("train-v"))

    def images(self, part: str) -> int:
        return sum(rows for _, _, rows in self._parts.get(part, []))

    def fits_in_memory(self) -> bool:
        """Whether the training views and validation features together take at most `in_memory_bytes()`."""
        parts = [part for part in self._parts if part != "test"]
        return sum(self.images(part) for part in parts) * self.record_bytes <= in_memory_bytes()

    def arrays(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """A part's features [n, d] and labels (binary: float32 [n, 1], else int32 [n]), in shard order."""
        dtype = record_dtype(self.dim)
        records = np.empty(self.images(part), dtype)
        start = 0
        for path, offset, rows in self._parts.get(part, []):
            records[start : start + rows] = np.fromfile(path, dtype, count=rows, offset=offset)
            start += rows
        labels = records["y"].reshape(-1, 1) if self.binary else records["y"].astype(np.int32)
        return np.ascontiguousarray(records["x"]), np.ascontiguousarray(labels)

    def _decode(self, records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        values = tf.reshape(tf.io.decode_raw(records, tf.float32), [-1, self.dim + 1])
        labels = values[:, self.dim :] if self.binary else tf.cast(values[:, self.dim], tf.int32)
        return values[:, : self.dim], labels

    def _records(self, files: Sequence[tuple[str, int, int]], cycle: int) -> tf.data.Dataset:
        paths = tf.constant([path for path, _, _ in files], tf.string)
        offsets = tf.constant([offset for _, offset, _ in files], tf.int64)
        return tf.data.Dataset.from_tensor_slices((paths, offsets)).interleave(
            lambda path, offset: tf.data.FixedLengthRecordDataset(
                path, self.record_bytes, header_bytes=offset
            ),
            cycle_length=cycle,
            block_length=1,
        )

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> tf.data.Dataset:
        """Epoch `epoch` (from 0): view `epoch % views`, in an order fixed by (seed, epoch)."""
        files = self._parts[f"train-v{epoch % self.views}"]
        rng = np.random.default_rng([seed, epoch])
        files = [files[i] for i in rng.permutation(len(files))]
        n = sum(rows for _, _, rows in files)
        buffer = max(1, min(n, SHUFFLE_BUFFER_BYTES // self.record_bytes))
        records = self._records(files, min(READ_SHARDS, len(files)))
        records = records.shuffle(buffer, seed=int(rng.integers(1 << 31)), reshuffle_each_iteration=False)
        return static_tuning(records.batch(batch_size).map(self._decode).prefetch(tf.data.AUTOTUNE))

    def eval_batches(self, part: str, batch_size: int) -> tf.data.Dataset:
        """A split's features and labels in file order."""
        records = self._records(self._parts.get(part, []), 1)
        return static_tuning(records.batch(batch_size).map(self._decode).prefetch(tf.data.AUTOTUNE))
