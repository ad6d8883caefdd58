"""Training proper: the epoch loop, and `train`, the sequence of steps from a checked layout to a result.

Feature extraction never runs the frozen base inside the training loop: the head trains on the base's
features, computed once per image or per augmented view into shards on disk and streamed back from
them (`features`); epoch e (from 0) uses view `e % cachedViews`. The head shares its layers with the
end-to-end model that gets exported, so scoring the test features with the head is the end-to-end
model's computation, without tracing the whole network a second time (a test checks the exported model
reproduces the accuracy).

Fine-tuning trains the end-to-end model on the image pipeline (cached decoded images, augmentation on
the fly), with the base unfrozen from `fineTuneAt` and BatchNorm frozen.

Each epoch is one `fit` call, followed by the early-stopping step, a checkpoint and then the progress
line; this keeps all state that must survive a restart (history, early stopping, best weights, optimizer
state) under our control rather than inside Keras callbacks that reset at `on_train_begin`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferjob.constants import MISCLASSIFIED_FILE, MISCLASSIFIED_LIMIT
from transferjob.models import EpochMetrics, Mode, ModelArtifacts, TestMetrics, TrainingSpec, TransferJobSpec
from transferjob.progress import EpochEnded, Finished, Started
from transferjob_trainer import fs, modeling
from transferjob_trainer.checkpoint import BEST_WEIGHTS, CheckpointStore, RunState
from transferjob_trainer.errors import InvalidSpecError, raise_if_terminated
from transferjob_trainer.export import FrozenBase, export
from transferjob_trainer.features import (
    FeatureCache,
    FeatureSet,
    Source,
    reorder,
    train_order,
    weights_digest,
)
from transferjob_trainer.head import SCORE_BATCH, HeadTrainer, StreamingHeadTrainer, predict_features
from transferjob_trainer.inference import (
    Inference,
    inference_batches,
    inference_function,
    run_inference,
    serving_function,
)
from transferjob_trainer.layout import MAX_NAMED_SKIPPED, Layout
from transferjob_trainer.metrics import classification_metrics, misclassified
from transferjob_trainer.paths import RunPaths
from transferjob_trainer.pipeline import (
    Augmenter,
    CacheFill,
    augments,
    available_memory_bytes,
    build_augmenter,
    cached_image_bytes,
    decode_errors_as_invalid_data,
    eval_batches,
    image_dataset,
    should_cache,
    shuffled_images,
    training_batches,
)
from transferjob_trainer.report import Reporter, StepMeter, log
from transferjob_trainer.stopping import kept_epoch, step
from transferjob_trainer.tensorboard_log import TensorBoardLog
from transferjob_trainer.workers import Group, distributed_fitter

# Images go through the base in batches of the spec's `batchSize`: on CPUs, larger batches run slower
# per image once the activations no longer fit the cache (MobileNetV2 at 96 px on 2 cores: batches of
# 32 take about half the time per image of batches of 64), and the batch a job trains with is known to
# fit the device's memory. Cached feature vectors are scored in batches of `head.SCORE_BATCH`.

#: The longer side of a misclassified image's thumbnail in misclassified.json, in pixels (never enlarged).
THUMBNAIL_SIZE = 128

#: Batches per call of Keras' traced training step when the head trains with `fit` (several replicas;
#: see `modeling.compile_model`): an epoch is then a handful of calls instead of one per batch.
HEAD_STEPS_PER_EXECUTION = 64

FitOneEpoch = Callable[[int], dict[str, float]]


def distribution_strategy() -> tuple[tf.distribute.Strategy, list[str]]:
    """Every visible GPU: MirroredStrategy for several, the default strategy for one or none (CPU)."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus]), [d.name for d in gpus]
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")[:1]]
    return tf.distribute.get_strategy(), devices


def build_or_load_model(spec: TransferJobSpec, paths: RunPaths, n_classes: int) -> keras.Model:
    """The end-to-end model: a fine-tuning job's init model, or a fresh base with a new head."""
    size = spec.model.image_size
    if spec.mode is Mode.FINE_TUNING and paths.init_model:
        model = modeling.load_saved_model(paths.init_model, "init model")
        predicts = modeling.output_classes(model)
        if predicts != n_classes:
            raise InvalidSpecError(
                f"init model {paths.init_model} predicts {predicts} classes but the data has {n_classes}"
            )
        shape = tuple(model.inputs[0].shape[1:3])
        if any(side not in (None, size) for side in shape):
            raise InvalidSpecError(f"init model takes {shape} images but model.imageSize is {size}")
        return model
    base, preprocess = modeling.build_base(spec.model.base, spec.model.weights, size)
    return modeling.build_model(base, n_classes, spec.model.head, size, preprocess)


def learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def epoch_metrics(epoch: int, logs: dict[str, float], lr: float, seconds: float) -> EpochMetrics:
    def get(name: str) -> float | None:
        value = logs.get(name)
        return None if value is None or not np.isfinite(value) else float(value)

    return EpochMetrics(
        epoch=epoch,
        loss=get("loss"),
        accuracy=get("accuracy"),
        val_loss=get("val_loss"),
        val_accuracy=get("val_accuracy"),
        learning_rate=lr,
        seconds=round(seconds, 3),
    )


def fit_on_features(
    head: keras.Model, features: FeatureSet, batch_size: int, seed: int, single_device: bool
) -> FitOneEpoch:
    """One epoch of the head on the cached features; epoch e uses augmented view e mod views.

    On one device, the epoch and its validation in one traced call: `head.HeadTrainer` on features held
    in memory when they are small (`FeatureSet.fits_in_memory`), else `head.StreamingHeadTrainer` on the
    shards streamed from disk (`FeatureSet.train_batches`). With several replicas, Keras' `fit` (which
    spreads the batches over them) on the streamed shards.
    """
    val = features.eval_batches("val", SCORE_BATCH)
    train = partial(features.train_batches, batch_size=batch_size, seed=seed)
    if not single_device:
        return fit_on_datasets(head, train, val)
    if not features.fits_in_memory():
        return StreamingHeadTrainer(head, train, val, binary=features.binary)
    views = [features.arrays(f"train-v{view}") for view in range(features.views)]
    val_x, val_y = features.arrays("val")
    return HeadTrainer(
        head,
        [x for x, _ in views],
        views[0][1],
        val_x,
        val_y,
        batch_size=batch_size,
        seed=seed,
        binary=features.binary,
    )


def fit_on_datasets(
    model: keras.Model,
    train_for_epoch: Callable[[int], tf.data.Dataset],
    val: tf.data.Dataset,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> FitOneEpoch:
    """One `fit` call per epoch on the dataset for that epoch (datasets shuffle and augment themselves)."""

    def fit_one_epoch(epoch: int) -> dict[str, float]:
        history = model.fit(
            train_for_epoch(epoch),
            epochs=epoch + 1,
            initial_epoch=epoch,
            validation_data=val,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return {k: float(v[-1]) for k, v in history.history.items()}

    return fit_one_epoch


class CountBatches(keras.callbacks.Callback):
    """Calls `on_batch(images)` after each batch of Keras' `predict` (the batch's nominal size)."""

    def __init__(self, on_batch: Callable[[int], None], batch_size: int) -> None:
        super().__init__()
        self.on_batch, self.batch_size = on_batch, batch_size

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.on_batch(self.batch_size)


class EpochProgress(keras.callbacks.Callback):
    """Feeds a `StepMeter` from `fit`: a new count each epoch, a batch's images after each batch."""

    def __init__(self, meter: StepMeter, batch_size: int, epochs: int) -> None:
        super().__init__()
        self.meter, self.batch_size, self.epochs = meter, batch_size, epochs

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.meter.new_epoch(epoch + 1, max(0, self.epochs - epoch - 1))

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.meter.advance(self.batch_size)


def train_epochs(
    spec: TransferJobSpec,
    state: RunState,
    store: CheckpointStore,
    train_model: keras.Model,
    fit_one_epoch: FitOneEpoch,
    board: TensorBoardLog,
    reporter: Reporter,
    chief: bool = True,
) -> RunState:
    """Epochs from `state.epochs_done` until the planned number or early stopping.

    Only the `chief` of a worker group writes the checkpoint and TensorBoard; every worker computes the
    same metrics and so takes the same early-stopping decisions.
    """
    epochs = int(spec.training.epochs or 1)
    stopping = spec.training.early_stopping
    while state.epochs_done < epochs and not state.stop.stopped:
        epoch = state.epochs_done + 1
        started = time.perf_counter()
        logs = fit_one_epoch(state.epochs_done)
        lr = learning_rate(train_model)
        metrics = epoch_metrics(epoch, logs, lr, time.perf_counter() - started)
        # Judged on the reported (rounded) value, so anyone can re-derive bestEpoch from the history.
        monitored = metrics.val_loss if stopping.monitor == "val_loss" else metrics.val_accuracy
        state.stop, improved = step(state.stop, epoch, monitored, stopping)
        state.epochs_done = epoch
        state.history.append(metrics.to_dict())
        if chief:
            board.write(epoch, logs, lr)
            store.commit(state, train_model, improved)
        reporter.emit(EpochEnded(epochs=epochs, metrics=metrics))
        raise_if_terminated()
    return state


# ------------------------------------------------------------------------------------------ the steps


@dataclass(frozen=True)
class Plan:
    """What this run has left to do, decided once from the spec, the data and the resumed state."""

    epochs: int
    feature_extraction: bool
    #: Epochs are left to train (the run is not resuming a finished or early-stopped one).
    remaining: bool
    #: The splits whose features this run reads: all three while epochs remain, else only test.
    feature_parts: tuple[str, ...]
    #: The base's features must be computed (feature extraction, and shards this run reads are missing).
    feature_pass: bool
    #: A killed pass left finished shards: the missing ones decode just their own images.
    features_started: bool
    #: Decoded images are kept in memory (`data.cache`).
    cache: bool


@dataclass
class Images:
    """The three splits as image datasets, and the background pass that fills their caches, if any."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    fill: CacheFill | None
    #: Each split in the order its features are written, with its dataset (feature extraction's pass).
    sources: dict[str, Source]

    def wait(self) -> None:
        """Return once the caches are full: a tf.data memory cache must not be filled by two iterators."""
        if self.fill is not None:
            self.fill.wait()


@dataclass
class Network:
    """The end-to-end model (what is exported) and the model that trains: its head, or the model itself."""

    model: keras.Model
    train_model: keras.Model
    #: Feature extraction's halves of `model` (`train_model` is the head); None when fine-tuning.
    parts: modeling.SplitModel | None
    #: The end-to-end model's forward pass, traced once and exported as the SavedModel's signature;
    #: None with several replicas, where Keras' `predict` spreads the batches and the export traces anew.
    serve: Inference | None
    #: Feature extraction's traced base pass on one device (`serve` reuses its trace).
    extract: Inference | None
    #: That pass folded into constants for the SavedModel, on a thread beside the feature pass.
    frozen_base: FrozenBase | None = None


def set_up_devices(
    training: TrainingSpec, group: tf.distribute.Strategy | None = None
) -> tuple[tf.distribute.Strategy, list[str]]:
    """Seeds and the precision policy first: both must be set before any layer or random op is made.

    `group` is a worker group's MultiWorkerMirroredStrategy (`workers.start_strategy`), made before
    anything else ran; it spans this worker's devices.
    """
    keras.utils.set_random_seed(training.seed)
    if training.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    if group is not None:
        return group, list(group.extended.worker_devices)
    return distribution_strategy()


def open_checkpoints(output: str, fp: str) -> tuple[CheckpointStore, RunState]:
    """The checkpoint store, and the state to continue from: a killed run with this fingerprint resumes."""
    fs.makedirs(output)
    store = CheckpointStore(fs.join(output, "checkpoints"))
    state = store.load(fp) or RunState(fp)
    if state.epochs_done:
        log(f"resuming after epoch {state.epochs_done} from {store.folder}")
    return store, state


def plan_run(spec: TransferJobSpec, layout: Layout, state: RunState, cache: FeatureCache | None) -> Plan:
    """Decide once what is left, so that the steps after it agree on which passes happen."""
    epochs = int(spec.training.epochs or 1)
    remaining = state.epochs_done < epochs and not state.stop.stopped
    parts = ("train", "val", "test") if remaining else ("test",)
    needed = cache.needed(parts) if cache is not None else []
    missing = cache.missing(parts) if cache is not None else []
    n_images = len(layout.train) + len(layout.val) + len(layout.test)
    return Plan(
        epochs=epochs,
        feature_extraction=cache is not None,
        remaining=remaining,
        feature_parts=parts,
        feature_pass=bool(missing),
        features_started=0 < len(missing) < len(needed),
        cache=should_cache(
            spec.data.cache, cached_image_bytes(n_images, spec.model.image_size), available_memory_bytes()
        ),
    )


def open_feature_cache(
    spec: TransferJobSpec, layout: Layout, store: CheckpointStore, fp: str, group: Group | None = None
) -> FeatureCache | None:
    """Feature extraction's shard cache beside the checkpoints (None when fine-tuning).

    In a worker group each worker computes the features of its own shard (`layout` is that shard). The
    chief keeps them beside the checkpoints, like a single worker; the others write nothing to the
    output, so theirs go to local scratch and a restarted pod computes its shard again.
    """
    if spec.mode is not Mode.FEATURE_EXTRACTION:
        return None
    folder = store.folder
    if group is not None and not group.worker.chief:
        key = hashlib.sha256(store.folder.encode()).hexdigest()[:16]
        folder = os.path.join(tempfile.gettempdir(), "transferjob-worker", f"{key}-{group.worker.index}")
    augmentation = spec.data.augmentation
    inputs = {
        "fingerprint": fp,
        "imageSize": spec.model.image_size,
        "data": layout.digest(),
        "trainOrderSeed": spec.training.seed,
        "augmentation": augmentation.model_dump(mode="json") if augmentation.enabled else None,
    }
    counts = {"train": len(layout.train), "val": len(layout.val), "test": len(layout.test)}
    views = augmentation.cached_views if augments(augmentation) else 1
    return FeatureCache.open(folder, inputs, counts, views)


def open_images(layout: Layout, size: int, plan: Plan, seed: int) -> Images:
    """The splits' datasets, with the caches this run will read filling from now on, in the background.

    Called before the network is built, so the decoding runs on the cores that building (single-threaded
    Python) leaves idle (`pipeline.CacheFill`). Feature extraction reads the training images in the
    order their features are written (`features.train_order`).
    """
    binary = layout.binary
    train_split = (
        reorder(layout.train, train_order(len(layout.train), seed))
        if plan.feature_extraction
        else layout.train
    )
    train = image_dataset(train_split, size, binary=binary, cache=plan.cache)
    val = image_dataset(layout.val, size, binary=binary, cache=plan.cache)
    # Feature extraction without cached features sends every split through the base in one pass; the
    # test images are then decoded (and cached) early too. Fine-tuning decodes them at the end.
    test = image_dataset(layout.test, size, binary=binary, cache=plan.cache and plan.feature_pass)
    if plan.feature_pass and not plan.features_started:
        needed = [train, val, test]
    elif not plan.feature_extraction and plan.remaining:
        needed = [train, val]
    else:
        needed = []
    sources = {
        "train": Source(train_split, train),
        "val": Source(layout.val, val),
        "test": Source(layout.test, test),
    }
    return Images(train, val, test, CacheFill(needed) if plan.cache and needed else None, sources)


def build_network(
    spec: TransferJobSpec,
    paths: RunPaths,
    layout: Layout,
    plan: Plan,
    state: RunState,
    store: CheckpointStore,
    strategy: tf.distribute.Strategy,
) -> Network:
    """The compiled model that trains, with a resumed run's weights, and its traced forward passes.

    The model is built in the strategy's scope so its variables live on every replica. The forward
    passes are made (not yet traced) once here, and reused by the feature pass or the test pass and by
    the export, so the network is traced once per run.
    """
    training = spec.training
    parts = None
    with strategy.scope():
        model = build_or_load_model(spec, paths, len(layout.classes))
        if plan.feature_extraction:
            parts = modeling.split_model(model)
            train_model = parts.head
        else:
            assert spec.model.fine_tune_at is not None  # resolved by the spec's validator
            trainable = modeling.set_fine_tune(model, spec.model.fine_tune_at)
            log(f"fine-tuning {trainable} base layers from {spec.model.fine_tune_at!r} (BatchNorm frozen)")
            train_model = model
        modeling.compile_model(
            train_model,
            training.optimizer,
            float(training.learning_rate or 1e-4),
            layout.binary,
            HEAD_STEPS_PER_EXECUTION if plan.feature_extraction else 1,
        )
        if state.weights:
            store.load_weights(train_model, state.weights)
    extract = serve = None
    if strategy.num_replicas_in_sync == 1 or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # A worker group's chief tests and exports alone: Keras' `predict` would wait for the others.
        if parts is not None:
            extract = inference_function(parts.extractor)
            serve = serving_function(extract, parts.head)
        else:
            serve = inference_function(model)
    return Network(model, train_model, parts, serve, extract)


def started_event(
    spec: TransferJobSpec, layout: Layout, plan: Plan, state: RunState, devices: list[str]
) -> Started:
    """The first protocol event: the data checked and the model built, so the job is truly under way."""
    return Started(
        mode=spec.mode.value,
        base=spec.model.base,
        epochs=plan.epochs,
        initial_epoch=state.epochs_done,
        classes=list(layout.classes),
        train_images=len(layout.train),
        val_images=len(layout.val),
        test_images=len(layout.test),
        devices=devices,
        skipped_images=len(layout.skipped),
        skipped_files=[f"{path}: {why}" for path, why in layout.skipped[:MAX_NAMED_SKIPPED]],
    )


def extract_features(
    spec: TransferJobSpec,
    binary: bool,
    plan: Plan,
    cache: FeatureCache,
    images: Images,
    net: Network,
    augment: Augmenter | None,
    reporter: Reporter,
    freeze: bool = False,
) -> FeatureSet:
    """The base's features of the splits this run reads: the shards a killed run finished are kept,
    the missing ones computed (`features.FeatureCache`), the base traced meanwhile.

    The trace is made while the background pass may still be decoding images; only then does this
    wait for the caches, which the feature pass is the first to read. With `freeze` (a SavedModel will
    be exported here), the traced base is folded into constants on a thread beside the feature pass
    (`export.FrozenBase`).
    """
    assert net.parts is not None  # feature extraction always splits the model
    extractor, extract = net.parts.extractor, net.extract

    def start_freezing() -> None:
        if freeze and extract is not None and FrozenBase.fits(extract):
            net.frozen_base = FrozenBase(extract)

    cache.bind_base(
        {
            "base": spec.model.base,
            "weights": spec.model.weights,
            "featureShape": list(extractor.outputs[0].shape[1:]),
            "digest": weights_digest(extractor),
        }
    )
    missing = cache.missing(plan.feature_parts)
    if missing:
        views = len({s.part for s in missing if s.split == "train"})
        reporter.phase("features", f"computing base features ({views} view(s) of the training set)")
        if extract is not None:
            extract.get_concrete_function()  # traced while the images may still be decoding
        start_freezing()
        images.wait()  # the caches are full before any pipeline reads them
        reused = len(cache.needed(plan.feature_parts)) - len(missing)
        if reused:
            log(f"features: {reused} shard(s) finished by an earlier run are reused")
        meter = StepMeter(reporter.emit, "features", sum(s.images for s in missing))
        cache.compute(
            missing,
            images.sources,
            (lambda batches, on_batch: inference_batches(extract, batches, on_batch))
            if extract is not None
            else (
                lambda batches, on_batch: [
                    extractor.predict(
                        batches, verbose=0, callbacks=[CountBatches(on_batch, spec.training.batch_size)]
                    )
                ]
            ),
            one_pass=extract is not None,
            image_size=spec.model.image_size,
            augment=augment,
            batch_size=spec.training.batch_size,
            on_batch=meter.advance,
        )
    else:
        start_freezing()  # beside the head's epochs instead
        images.wait()
    return cache.feature_set(plan.feature_parts, binary)


def epoch_fitter(
    spec: TransferJobSpec,
    layout: Layout,
    plan: Plan,
    net: Network,
    features: FeatureSet | None,
    images: Images,
    augment: Augmenter | None,
    single_device: bool,
    reporter: Reporter,
    group: Group | None = None,
) -> FitOneEpoch:
    """One epoch of training: the head on cached features, or the whole model on augmented images.

    Fine-tuning reports its progress inside each epoch (an epoch over many images takes long); the
    head's epochs on cached features take seconds and report only as they end.
    """
    training = spec.training
    if features is not None and group is not None:
        # Each worker trains the head on its shard's features; the head's gradients are all-reduced.
        return distributed_fitter(
            group,
            net.train_model,
            layout.binary,
            partial(features.train_batches, batch_size=training.batch_size, seed=training.seed),
            features.eval_batches("val", training.batch_size),
            training.batch_size,
            lambda epoch: None,
            lambda images: None,
        )
    if features is not None:
        return fit_on_features(net.train_model, features, training.batch_size, training.seed, single_device)
    shuffled = shuffled_images(
        layout.train,
        spec.model.image_size,
        binary=layout.binary,
        seed=training.seed,
        cached=images.train if plan.cache else None,
    )
    if group is not None:
        # This worker's images an epoch: its share of the steps that cover the data set once.
        steps = group.worker.steps(group.train_images, training.batch_size)
        group_meter = StepMeter(reporter.emit, "training", steps * training.batch_size)
        return distributed_fitter(
            group,
            net.train_model,
            layout.binary,
            training_batches(shuffled.repeat(), training.batch_size, augment),
            eval_batches(images.val, training.batch_size),
            training.batch_size,
            lambda epoch: group_meter.new_epoch(epoch + 1, max(0, plan.epochs - epoch - 1)),
            group_meter.advance,
        )
    train_ds = training_batches(shuffled, training.batch_size, augment)
    meter = StepMeter(reporter.emit, "training", len(layout.train))
    return fit_on_datasets(
        net.train_model,
        lambda _: train_ds,
        eval_batches(images.val, training.batch_size),
        [EpochProgress(meter, training.batch_size, plan.epochs)],
    )


def restore_kept_epoch(state: RunState, store: CheckpointStore, net: Network, spec: TransferJobSpec) -> int:
    """The epoch whose weights are tested and exported: early stopping's best, loaded if not the last."""
    kept = kept_epoch(state.stop, state.epochs_done, spec.training.early_stopping)
    if kept != state.epochs_done and state.best_weights:
        log(f"restoring the weights of epoch {kept}")
        store.load_weights(net.train_model, BEST_WEIGHTS)
    return kept


def test_probabilities(
    net: Network, features: FeatureSet | None, images: Images, batch_size: int
) -> np.ndarray:
    """The kept weights' predictions on the test set, by the forward pass the export then reuses.

    Feature extraction scores the cached test features with the head (the end-to-end model's own
    layers); fine-tuning runs the test images through the traced model, whose trace the export saves.
    """
    if features is not None:
        return np.asarray(predict_features(net.train_model, features.eval_batches("test", SCORE_BATCH)))
    test_batches = eval_batches(images.test, batch_size).map(lambda x, y: x)
    if net.serve is not None:
        return np.asarray(run_inference(net.serve, test_batches))
    return np.asarray(net.model.predict(test_batches, verbose=0))


def thumbnail(path: str) -> str | None:
    """A small JPEG of an image file as a data: URI (a page shows it as it is), or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(fs.read_bytes(path))) as image:
            small = image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB")
            small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=85)
    except Exception as error:  # Pillow raises many types for broken files; a thumbnail is optional
        log(f"no thumbnail of {path}: {error}")
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_misclassified(layout: Layout, probabilities: np.ndarray, output: str) -> None:
    """misclassified.json beside metrics.json: the most confident mistakes on the test set, bounded.

    Each names its file relative to the data folder, and carries a thumbnail, so a report made where
    the data cannot be read (a volume only the pod mounts) still shows the images.
    """
    mistakes, total = misclassified(layout.test.labels, probabilities, MISCLASSIFIED_LIMIT)
    root = layout.root.rstrip("/") + "/"
    images = [
        {
            "file": layout.test.files[m.index].removeprefix(root),
            "true": layout.classes[m.true],
            "predicted": layout.classes[m.predicted],
            "probability": round(m.probability, 4),
            "thumbnail": thumbnail(layout.test.files[m.index]),
        }
        for m in mistakes
    ]
    document = {"testImages": len(layout.test), "misclassified": total, "images": images}
    fs.write_text(fs.join(output, MISCLASSIFIED_FILE), json.dumps(document, indent=1))


def finished_event(
    spec: TransferJobSpec,
    layout: Layout,
    state: RunState,
    kept: int,
    test: TestMetrics,
    artifacts: ModelArtifacts,
    output: str,
) -> Finished:
    """The final event, and metrics.json (with mode, base and classes) beside the model.

    metrics.json holds every figure; the event, which becomes `.status`, holds the test metrics'
    bounded summary (`TestMetrics.summary`), so a job with many classes still fits in etcd.
    """
    history = [EpochMetrics.model_validate(h) for h in state.history]
    finished = Finished(
        epochs_run=state.epochs_done, best_epoch=kept, test=test, model=artifacts, history=history
    )
    summary = {
        "mode": spec.mode.value,
        "base": spec.model.base,
        "classes": list(layout.classes),
        **{k: v for k, v in finished.to_dict().items() if k != "event"},
    }
    fs.write_text(artifacts.metrics_uri or fs.join(output, "metrics.json"), json.dumps(summary, indent=1))
    return finished.model_copy(update={"test": test.summary()})


def train(
    spec: TransferJobSpec,
    paths: RunPaths,
    layout: Layout,
    fp: str,
    reporter: Reporter,
    group: Group | None = None,
) -> Finished | None:
    """Build (or resume), train, restore the best epoch, test, export; returns the finished event.

    In a worker `group` (`layout` is then this worker's shard), every worker trains; only the chief
    writes checkpoints and TensorBoard, tests and exports, and the others return None once the epochs
    are done.
    """
    chief = group is None or group.worker.chief
    strategy, devices = set_up_devices(spec.training, group.strategy if group else None)
    store, state = open_checkpoints(paths.output, fp)
    cache = open_feature_cache(spec, layout, store, fp, group)
    plan = plan_run(spec, layout, state, cache)
    images = open_images(layout, spec.model.image_size, plan, spec.training.seed)
    net = build_network(spec, paths, layout, plan, state, store, strategy)
    single_device = strategy.num_replicas_in_sync == 1
    reporter.emit(started_event(spec, layout, plan, state, devices))
    with decode_errors_as_invalid_data([layout.train, layout.val, layout.test]):
        augment = build_augmenter(spec.data.augmentation, spec.training.seed)
        features = None
        if cache is not None:
            freeze = chief and spec.output.saved_model
            features = extract_features(
                spec, layout.binary, plan, cache, images, net, augment, reporter, freeze
            )
        else:
            images.wait()
        if plan.remaining:
            fit_one_epoch = epoch_fitter(
                spec, layout, plan, net, features, images, augment, single_device, reporter, group
            )
            reporter.phase("training", f"epochs {state.epochs_done + 1}-{plan.epochs}")
            logs = spec.output.tensorboard and chief
            board = TensorBoardLog(fs.join(paths.output, "tensorboard") if logs else None)
            state = train_epochs(spec, state, store, net.train_model, fit_one_epoch, board, reporter, chief)
        if not chief:
            return None
        kept = restore_kept_epoch(state, store, net, spec)
        reporter.phase("evaluating", f"testing the weights of epoch {kept}")
        probabilities = test_probabilities(net, features, images, spec.training.batch_size)
        test = classification_metrics(np.asarray(layout.test.labels), probabilities, layout.classes)
    reporter.phase("exporting", f"writing to {paths.output}")
    write_misclassified(layout, probabilities, paths.output)
    base = (net.frozen_base, net.parts.head) if net.frozen_base and net.parts else None
    artifacts = export(net.model, paths.output, spec, layout.classes, net.serve, base)
    return finished_event(spec, layout, state, kept, test, artifacts, paths.output)
