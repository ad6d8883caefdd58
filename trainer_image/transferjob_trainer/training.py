"""Training proper: feature extraction on cached features, or fine-tuning; then test and export.

Feature extraction never runs the frozen base inside the training loop. The base's pooled features are
computed once per image (without augmentation), or once per augmented view (`cachedViews` views of every
training image, each a fresh random augmentation), and the head trains on those arrays: epoch e (from 0)
uses view `e % cachedViews`, so the views cycle through the epochs. Validation and test features are
computed once, in the same pass. The head shares its layers with the end-to-end model that gets
exported, so scoring the test features with the head is the end-to-end model's computation, without
tracing the whole network a second time (a test checks the exported model reproduces the accuracy).

Fine-tuning trains the end-to-end model on the image pipeline (cached decoded images, augmentation on
the fly), with the base unfrozen from `fineTuneAt` and BatchNorm frozen.

Each epoch is one `fit` call, followed by the early-stopping step, a checkpoint and then the progress
line; this keeps all state that must survive a restart (history, early stopping, best weights, optimizer
state) under our control rather than inside Keras callbacks that reset at `on_train_begin`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TypeAlias

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from transferjob.models import EpochMetrics, Mode, ModelArtifacts, TransferJobSpec
from transferjob.progress import EpochEnded, Finished, Started
from transferjob_trainer import fs, modeling
from transferjob_trainer.checkpoint import BEST_WEIGHTS, CheckpointStore, RunState
from transferjob_trainer.errors import InvalidSpecError, raise_if_terminated
from transferjob_trainer.head import SCORE_BATCH, HeadTrainer, predict_features
from transferjob_trainer.layout import Layout, Split
from transferjob_trainer.metrics import classification_metrics
from transferjob_trainer.paths import RunPaths
from transferjob_trainer.pipeline import (
    Augmenter,
    CacheFill,
    available_memory_bytes,
    build_augmenter,
    cached_image_bytes,
    decode_errors_as_invalid_data,
    eval_batches,
    image_dataset,
    should_cache,
    static_tuning,
    training_batches,
)
from transferjob_trainer.report import Reporter
from transferjob_trainer.stopping import kept_epoch, step

# Images go through the base in batches of the spec's `batchSize`: on CPUs, larger batches run slower
# per image once the activations no longer fit the cache (MobileNetV2 at 96 px on 2 cores: batches of
# 32 take about half the time per image of batches of 64), and the batch a job trains with is known to
# fit the device's memory. Cached feature vectors are scored in batches of `head.SCORE_BATCH`.

#: Batches per call of Keras' traced training step when the head trains with `fit` (several replicas;
#: see `modeling.compile_model`): an epoch is then a handful of calls instead of one per batch.
HEAD_STEPS_PER_EXECUTION = 64

FitOneEpoch = Callable[[int], dict[str, float]]
Inference: TypeAlias = tf.types.experimental.PolymorphicFunction


def log(message: str) -> None:
    """Human-readable notes go to stderr; stdout carries only protocol events."""
    print(f"[trainer] {message}", file=sys.stderr, flush=True)


def distribution_strategy() -> tuple[tf.distribute.Strategy, list[str]]:
    """Every visible GPU: MirroredStrategy for several, the default strategy for one or none (CPU)."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus]), [d.name for d in gpus]
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")[:1]]
    return tf.distribute.get_strategy(), devices


def labels_array(split: Split, binary: bool) -> np.ndarray:
    if binary:
        return np.asarray(split.labels, dtype=np.float32).reshape(-1, 1)
    return np.asarray(split.labels, dtype=np.int32)


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


def inference_function(model: keras.Model) -> Inference:
    """`model(images, training=False)` as one traced function over float32 image batches of any size.

    Traced once, on the first call; the SavedModel export reuses the trace (see `write_saved_model`),
    so the network is not traced a second time for serving.
    """
    signature = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name=modeling.INPUT_NAME)
    return tf.function(lambda images: model(images, training=False), input_signature=[signature])


def serving_function(extract: Inference, head: keras.Model) -> Inference:
    """The end-to-end model's computation as head(extract(images)): the extractor's trace is reused.

    The extractor and the head are the end-to-end model's own layers (`modeling.split_model`), so this
    is `model(images, training=False)`; a test checks the exported SavedModel against the .keras model.
    """
    signature = extract.input_signature[0]
    return tf.function(lambda images: head(extract(images), training=False), input_signature=[signature])


def run_inference(fn: Inference, batches: tf.data.Dataset) -> np.ndarray:
    """`fn` over every batch of images, outputs concatenated as float32."""
    outputs = [np.asarray(fn(batch), dtype=np.float32) for batch in batches]
    return np.concatenate(outputs)


def compute_features(
    extract: Callable[[tf.data.Dataset], np.ndarray],
    images: tf.data.Dataset,
    views: int,
    augment: Augmenter | None,
    batch_size: int,
) -> np.ndarray:
    """Pooled base features of every image: [views, n, d]; each view a fresh random augmentation."""
    out = []
    for view in range(views):
        ds = images.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), tf.data.AUTOTUNE)
        if augment is not None:
            ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        started = time.perf_counter()
        features = extract(ds.map(lambda x, y: x).prefetch(tf.data.AUTOTUNE))
        log(f"features view {view + 1}/{views}: {features.shape} in {time.perf_counter() - started:.1f}s")
        out.append(np.asarray(features, dtype=np.float32))
    return np.stack(out)


def _scalar_metadata() -> summary_pb2.SummaryMetadata:
    """What TensorBoard's scalars plugin tags its summaries with (see tensorboard's `scalar_v2`)."""
    metadata = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
    metadata.plugin_data.plugin_name = "scalars"
    return metadata


_SCALAR = _scalar_metadata()


def feature_cache(
    extract: Callable[[tf.data.Dataset], np.ndarray],
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    test: tf.data.Dataset,
    views: int,
    augment: Augmenter | None,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Training views, validation and test features; unaugmented splits go through the base in one pass."""
    n_train = int(train.cardinality())
    n_val = int(val.cardinality())
    if augment is None:
        both = compute_features(extract, train.concatenate(val).concatenate(test), 1, None, batch_size)[0]
        train_views = both[None, :n_train]
        rest = both[n_train:]
    else:
        train_views = compute_features(extract, train, views, augment, batch_size)
        rest = compute_features(extract, val.concatenate(test), 1, None, batch_size)[0]
    return {"train": train_views, "val": rest[:n_val], "test": rest[n_val:]}


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
    head: keras.Model,
    features: dict[str, np.ndarray],
    layout: Layout,
    binary: bool,
    batch_size: int,
    seed: int,
    single_device: bool,
) -> FitOneEpoch:
    """One epoch of the head on cached features; epoch e uses augmented view e mod views.

    On one device, `head.HeadTrainer`: the epoch and its validation in one traced call. With several
    replicas, Keras' `fit` (which spreads the batches over them) on datasets made once (reshuffled every
    pass), since handing NumPy arrays to each per-epoch `fit` call re-slices them every time.
    """
    train_y, val_y = labels_array(layout.train, binary), labels_array(layout.val, binary)
    if single_device:
        return HeadTrainer(
            head,
            features["train"],
            train_y,
            features["val"],
            val_y,
            batch_size=batch_size,
            seed=seed,
            binary=binary,
        )
    n = len(train_y)
    views = [
        static_tuning(tf.data.Dataset.from_tensor_slices((view, train_y)))
        .shuffle(n, seed=seed + i, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        for i, view in enumerate(features["train"])
    ]
    val = static_tuning(tf.data.Dataset.from_tensor_slices((features["val"], val_y))).batch(SCORE_BATCH)
    return fit_on_datasets(head, lambda epoch: views[epoch % len(views)], val)


def fit_on_datasets(
    model: keras.Model, train_for_epoch: Callable[[int], tf.data.Dataset], val: tf.data.Dataset
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
        )
        return {k: float(v[-1]) for k, v in history.history.items()}

    return fit_one_epoch


def train_epochs(
    spec: TransferJobSpec,
    state: RunState,
    store: CheckpointStore,
    train_model: keras.Model,
    fit_one_epoch: FitOneEpoch,
    board: TensorBoardLog,
    reporter: Reporter,
) -> RunState:
    """Epochs from `state.epochs_done` until the planned number or early stopping."""
    epochs = int(spec.training.epochs or 1)
    stopping = spec.training.early_stopping
    while state.epochs_done < epochs and not state.stop.stopped:
        epoch = state.epochs_done + 1
        started = time.perf_counter()
        logs = fit_one_epoch(state.epochs_done)
        metrics = epoch_metrics(epoch, logs, learning_rate(train_model), time.perf_counter() - started)
        # Judged on the reported (rounded) value, so anyone can re-derive bestEpoch from the history.
        monitored = metrics.val_loss if stopping.monitor == "val_loss" else metrics.val_accuracy
        state.stop, improved = step(state.stop, epoch, monitored, stopping)
        state.epochs_done = epoch
        state.history.append(metrics.to_dict())
        board.write(metrics)
        store.commit(state, train_model, improved)
        reporter.emit(EpochEnded(epochs=epochs, metrics=metrics))
        raise_if_terminated()
    return state


#: Largest total size of variables the SavedModel export folds into constants (see `write_saved_model`):
#: the graph is a protocol buffer, which cannot exceed 2 GiB, and loading a graph this large gets slow.
FREEZE_LIMIT_BYTES = 512 << 20


def write_saved_model(serve: Inference, path: str) -> None:
    """A SavedModel whose `serving_default` signature is `serve` (input `transferjob_image`: float32
    0-255 images, any batch size; output `output_0`), as Keras' `model.export` names them.

    The signature is saved from `serve`'s existing trace, with its variables folded into constants (a
    frozen graph) when they total at most `FREEZE_LIMIT_BYTES`. A SavedModel with variables carries
    save and restore operations for every one of them (some 260 for MobileNetV2): building those took
    about 1.5 s of the 3 s export on 2 CPU cores, and loading the model for serving took 1.6 s against
    0.5-0.9 s frozen. The SavedModel is for serving; `model.keras` is what training continues from.
    Larger models keep their variables. Keras' `model.export` instead traces the whole network again
    and walks every layer's trackable children: about 11 s here.
    """
    concrete = serve.get_concrete_function()
    module = tf.Module()
    size = sum(v.shape.num_elements() * v.dtype.size for v in concrete.variables)
    if size <= FREEZE_LIMIT_BYTES:
        signature = convert_variables_to_constants_v2(concrete)
    else:
        module.model_variables = list(concrete.variables)
        signature = concrete
    tf.saved_model.save(module, path, signatures={"serving_default": signature})


def export(
    model: keras.Model, output: str, spec: TransferJobSpec, serve: Inference | None = None
) -> ModelArtifacts:
    """model.keras, and the SavedModel for serving when asked (from `serve` when already traced)."""
    model_uri = fs.join(output, "model.keras")
    with fs.local_file_for_write(model_uri, ".keras") as tmp:
        model.save(tmp)
    saved_model_uri = None
    if spec.output.saved_model:
        saved_model_uri = fs.join(output, "saved_model")
        staging = tempfile.mkdtemp(prefix="savedmodel-", dir=output if fs.is_local(output) else None)
        try:
            target = os.path.join(staging, "saved_model")
            write_saved_model(serve or inference_function(model), target)
            fs.copy_tree(target, saved_model_uri)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ModelArtifacts(
        uri=model_uri,
        saved_model_uri=saved_model_uri,
        tensorboard_uri=fs.join(output, "tensorboard") if spec.output.tensorboard else None,
        metrics_uri=fs.join(output, "metrics.json"),
    )


def train(spec: TransferJobSpec, paths: RunPaths, layout: Layout, fp: str, reporter: Reporter) -> Finished:
    """Build (or resume), train, restore the best epoch, test, export; returns the finished event."""
    training = spec.training
    epochs = int(training.epochs or 1)
    feature_extraction = spec.mode is Mode.FEATURE_EXTRACTION
    keras.utils.set_random_seed(training.seed)
    if training.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    strategy, devices = distribution_strategy()
    fs.makedirs(paths.output)
    store = CheckpointStore(fs.join(paths.output, "checkpoints"))
    state = store.load(fp) or RunState(fp)
    if state.epochs_done:
        log(f"resuming after epoch {state.epochs_done} from {store.folder}")

    binary = layout.binary
    size = spec.model.image_size
    n_images = len(layout.train) + len(layout.val) + len(layout.test)
    cache = should_cache(spec.data.cache, cached_image_bytes(n_images, size), available_memory_bytes())
    remaining = state.epochs_done < epochs and not state.stop.stopped
    features: dict[str, np.ndarray] = (store.load_features(fp) or {}) if feature_extraction else {}
    # Feature extraction without cached features sends every split through the base in one pass; the
    # test images are then decoded (and cached) early too. Fine-tuning decodes them at the end.
    feature_pass = feature_extraction and not features
    train_images = image_dataset(layout.train, size, binary=binary, cache=cache)
    val_images = image_dataset(layout.val, size, binary=binary, cache=cache)
    test_images = image_dataset(layout.test, size, binary=binary, cache=cache and feature_pass)
    if feature_pass:
        needed = [train_images, val_images, test_images]
    elif not feature_extraction and remaining:
        needed = [train_images, val_images]
    else:
        needed = []
    fill = CacheFill(needed) if cache and needed else None
    with strategy.scope():
        model = build_or_load_model(spec, paths, len(layout.classes))
        if feature_extraction:
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
            binary,
            HEAD_STEPS_PER_EXECUTION if feature_extraction else 1,
        )
        if state.weights:
            store.load_weights(train_model, state.weights)
    # Inference through one traced function, reused by the SavedModel export. Several replicas keep
    # Keras' predict, which spreads the batches over them.
    single_device = strategy.num_replicas_in_sync == 1
    serve: Inference | None = None

    reporter.emit(
        Started(
            mode=spec.mode.value,
            base=spec.model.base,
            epochs=epochs,
            initial_epoch=state.epochs_done,
            classes=list(layout.classes),
            train_images=len(layout.train),
            val_images=len(layout.val),
            test_images=len(layout.test),
            devices=devices,
        )
    )
    splits = [layout.train, layout.val, layout.test]
    with decode_errors_as_invalid_data(splits):
        augment = build_augmenter(spec.data.augmentation, training.seed)
        views = spec.data.augmentation.cached_views if augment is not None and remaining else 1
        if feature_pass:
            reporter.phase("features", f"computing base features ({views} view(s) of the training set)")
        if feature_extraction and single_device:
            extract = inference_function(parts.extractor)
            serve = serving_function(extract, parts.head)
            if feature_pass:
                extract.get_concrete_function()  # traced while the images may still be decoding
        if fill is not None:
            fill.wait()  # the caches are full before any pipeline reads them
        if feature_pass:
            features = feature_cache(
                (lambda batches: run_inference(extract, batches))
                if single_device
                else (lambda batches: parts.extractor.predict(batches, verbose=0)),
                train_images,
                val_images,
                test_images,
                views,
                augment,
                training.batch_size,
            )
            store.save_features(fp, features)
        if remaining:
            if feature_extraction:
                fit_one_epoch = fit_on_features(
                    train_model, features, layout, binary, training.batch_size, training.seed, single_device
                )
            else:
                train_ds = training_batches(
                    train_images, len(layout.train), training.batch_size, training.seed, augment
                )
                fit_one_epoch = fit_on_datasets(
                    train_model, lambda _: train_ds, eval_batches(val_images, training.batch_size)
                )
            reporter.phase("training", f"epochs {state.epochs_done + 1}-{epochs}")
            board = TensorBoardLog(fs.join(paths.output, "tensorboard") if spec.output.tensorboard else None)
            state = train_epochs(spec, state, store, train_model, fit_one_epoch, board, reporter)

        kept = kept_epoch(state.stop, state.epochs_done, training.early_stopping)
        if kept != state.epochs_done and state.best_weights:
            log(f"restoring the weights of epoch {kept}")
            store.load_weights(train_model, BEST_WEIGHTS)
        reporter.phase("evaluating", f"testing the weights of epoch {kept}")
        if feature_extraction:
            probabilities = predict_features(train_model, features["test"])
        else:
            test_batches = eval_batches(test_images, training.batch_size).map(lambda x, y: x)
            if single_device:
                serve = inference_function(model)
                probabilities = run_inference(serve, test_batches)
            else:
                probabilities = model.predict(test_batches, verbose=0)
        test = classification_metrics(
            np.asarray(layout.test.labels), np.asarray(probabilities), layout.classes
        )

    reporter.phase("exporting", f"writing to {paths.output}")
    artifacts = export(model, paths.output, spec, serve)
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
    fs.write_text(
        artifacts.metrics_uri or fs.join(paths.output, "metrics.json"), json.dumps(summary, indent=1)
    )
    return finished
