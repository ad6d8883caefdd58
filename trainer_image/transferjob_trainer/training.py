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
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from transferjob.models import EpochMetrics, Mode, TransferJobSpec
from transferjob.progress import EpochEnded, Finished, Started
from transferjob_trainer import fs, modeling
from transferjob_trainer.checkpoint import BEST_WEIGHTS, CheckpointStore, RunState
from transferjob_trainer.errors import InvalidSpecError, raise_if_terminated
from transferjob_trainer.export import export
from transferjob_trainer.features import feature_cache
from transferjob_trainer.head import SCORE_BATCH, HeadTrainer, predict_features
from transferjob_trainer.inference import Inference, inference_function, run_inference, serving_function
from transferjob_trainer.layout import Layout, Split
from transferjob_trainer.metrics import classification_metrics
from transferjob_trainer.paths import RunPaths
from transferjob_trainer.pipeline import (
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
from transferjob_trainer.report import Reporter, log
from transferjob_trainer.stopping import kept_epoch, step
from transferjob_trainer.tensorboard_log import TensorBoardLog

# Images go through the base in batches of the spec's `batchSize`: on CPUs, larger batches run slower
# per image once the activations no longer fit the cache (MobileNetV2 at 96 px on 2 cores: batches of
# 32 take about half the time per image of batches of 64), and the batch a job trains with is known to
# fit the device's memory. Cached feature vectors are scored in batches of `head.SCORE_BATCH`.

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
