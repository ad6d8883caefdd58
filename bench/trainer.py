"""Benchmark: our cached-feature extraction vs the TensorFlow transfer-learning tutorial's pipeline.

Not a test; a script. On the same images (scikit-learn's digits, all 10 classes, upscaled to --size),
the same MobileNetV2 base (saved once to a weights file that both pipelines load; ImageNet weights cannot
be downloaded here, see `save_base`), the same head, optimizer, batch and epochs:

1. feature extraction without augmentation: ours (base run once per image, head trained on cached
   features) vs the tutorial (frozen base inside the model, re-run on every batch of every epoch, input
   pipeline `image_dataset_from_directory` + prefetch): wall time, test accuracy, speed-up. Ours is the
   whole `run` a user gets with the default outputs (image checks, model build, features, training
   with per-epoch checkpoints and TensorBoard logs, test metrics, model.keras and SavedModel export);
   the tutorial's time covers loading, building, `fit` and `evaluate` only, with no export;
2. the same with augmentation: ours with `cachedViews` augmented views vs the tutorial's augmentation
   layers inside the model;
3. fine-tuning throughput: our image pipeline (cached decoded uint8 images, shuffle, batch, prefetch)
   vs `model.fit` on in-memory float32 tensors, same model and batch, images/s after a warm-up epoch.

Every timed pipeline runs in a fresh interpreter of its own (this script, `--side NAME`): TensorFlow
and the packages are imported before the clock starts, and each side pays its own first-use costs
(graph runtime and oneDNN kernel set-up); in one shared process, whichever side ran second inherited
the other's warm state. The sides alternate, `--repeat` times, and the medians are compared, because
the shared machine's speed drifts within minutes.

Run: `.venv/bin/python bench/trainer.py [--size 96] [--epochs 10] [--out bench/trainer-results.json]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from transferjob.datasets import write_digits
from transferjob.models import parse_spec
from transferjob.progress import Finished
from transferjob_trainer import modeling
from transferjob_trainer.layout import scan_layout
from transferjob_trainer.paths import resolve_paths
from transferjob_trainer.pipeline import image_dataset, shuffled_images, training_batches
from transferjob_trainer.report import Reporter
from transferjob_trainer.run import run

AUGMENTATION = {"flip": "none", "rotation": 0.05, "zoom": 0.1, "translation": 0.1}


def save_base(size: int, data: Path, path: Path, args: argparse.Namespace, calibration: int = 256) -> None:
    """A MobileNetV2 base both pipelines load: briefly trained on the digits, BatchNorm calibrated.

    ImageNet weights cannot be downloaded here, and a random MobileNetV2 gives degenerate features (every
    head is at chance), which would make "equal accuracy" meaningless. So the base is trained for
    `--base-epochs` on the training split (a stand-in for pretrained weights; the benchmark measures the
    pipelines, not transfer), then one forward pass in training mode with BatchNorm momentum 0 sets the
    moving statistics to those of the images (a few dozen steps leave them near their initial values).
    """
    keras.utils.set_random_seed(args.seed)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    spec = parse_spec(
        {"data": {"source": {"hostPath": str(data)}}, "output": {"location": {"hostPath": "/x"}}}
    )
    layout = scan_layout(str(data), spec.data)
    images = image_dataset(layout.train, size, binary=False, cache=True)
    if args.base_epochs > 0:
        inputs = keras.Input((size, size, 3))
        x = base(keras.applications.mobilenet_v2.preprocess_input(inputs))
        outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        shuffled = shuffled_images(layout.train, size, binary=False, seed=args.seed, cached=images)
        batches = training_batches(shuffled, args.batch, None)
        model.fit(batches, epochs=args.base_epochs, shuffle=False, verbose=0)
    batch = next(iter(images.shuffle(len(layout.train), seed=args.seed).batch(calibration)))[0]
    batch_norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in batch_norms]
    for layer in batch_norms:
        layer.momentum = 0.0
    base(keras.applications.mobilenet_v2.preprocess_input(tf.cast(batch, tf.float32)), training=True)
    for layer, momentum in zip(batch_norms, momenta, strict=True):
        layer.momentum = momentum
    base.save_weights(path)


class PhaseClock(io.StringIO):
    """Collects the progress lines with the time each arrived, for a per-phase breakdown."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.perf_counter()
        self.marks: list[tuple[str, float]] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            event = json.loads(line)
            if event["event"] == "phase":
                self.marks.append((event["phase"], time.perf_counter() - self.start))
        return len(text)

    def phases(self, total: float) -> dict[str, float]:
        """Seconds from each phase's start to the next phase's (the last one to the end of the run)."""
        ends = [t for _, t in self.marks[1:]] + [total]
        return {name: round(end - t, 2) for (name, t), end in zip(self.marks, ends, strict=True)}


def ours(data: Path, out: Path, weights: Path, args: argparse.Namespace, augment: bool) -> dict[str, Any]:
    """Our trainer with the spec's output defaults, as a user gets it: model.keras, SavedModel,
    TensorBoard logs, metrics.json, per-epoch checkpoints and the feature cache are all written inside
    the timed region. In process (the interpreter and TensorFlow are already loaded, as for the
    tutorial); early stopping off for equal epochs."""
    augmentation = {"enabled": augment, **AUGMENTATION, "cachedViews": args.views}
    spec = parse_spec(
        {
            "model": {"base": "MobileNetV2", "weights": str(weights), "imageSize": args.size},
            "data": {"source": {"hostPath": str(data)}, "augmentation": augmentation},
            "training": {
                "epochs": args.epochs,
                "batchSize": args.batch,
                "learningRate": args.lr,
                "seed": args.seed,
                "earlyStopping": {"enabled": False},
            },
            "output": {"location": {"hostPath": str(out)}},
        }
    )
    assert spec.output.saved_model and spec.output.tensorboard
    shutil.rmtree(out, ignore_errors=True)  # a previous run's checkpoints would be resumed
    clock = PhaseClock()
    started = time.perf_counter()
    finished = run(spec, resolve_paths(spec, None, None, None), Reporter(clock, None))
    seconds = time.perf_counter() - started
    assert isinstance(finished, Finished)
    assert (out / "saved_model" / "1" / "saved_model.pb").exists() and (out / "tensorboard").is_dir()
    assert finished.epochs_run == args.epochs and [p for p, _ in clock.marks][1:3] == ["features", "training"]
    return {
        "seconds": seconds,
        "testAccuracy": finished.test.accuracy,
        "phases": clock.phases(seconds),
    }


def tutorial(data: Path, weights: Path, args: argparse.Namespace, augment: bool) -> dict[str, Any]:
    """The tutorial's pipeline (tensorflow.org/tutorials/images/transfer_learning), same base and head."""
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    load = dict(image_size=(args.size, args.size), batch_size=args.batch, seed=args.seed, verbose=False)
    train = keras.utils.image_dataset_from_directory(data / "train", shuffle=True, **load)
    val = keras.utils.image_dataset_from_directory(data / "val", shuffle=False, **load)
    test = keras.utils.image_dataset_from_directory(data / "test", shuffle=False, **load)
    train, val, test = (ds.prefetch(tf.data.AUTOTUNE) for ds in (train, val, test))
    base = keras.applications.MobileNetV2(
        include_top=False, weights=str(weights), input_shape=(args.size, args.size, 3)
    )
    base.trainable = False
    inputs = keras.Input((args.size, args.size, 3))
    x = inputs
    if augment:
        x = keras.layers.RandomRotation(AUGMENTATION["rotation"])(x)
        x = keras.layers.RandomZoom((-AUGMENTATION["zoom"], AUGMENTATION["zoom"]))(x)
        x = keras.layers.RandomTranslation(AUGMENTATION["translation"], AUGMENTATION["translation"])(x)
    x = keras.applications.mobilenet_v2.preprocess_input(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(args.lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=args.epochs, verbose=0)
    _, accuracy = model.evaluate(test, verbose=0)
    return {"seconds": time.perf_counter() - started, "testAccuracy": float(accuracy)}


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs: dict | None = None) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def fine_tuning_throughput(data: Path, weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of training epochs (after one warm-up epoch): our pipeline vs in-memory tensors."""
    spec = parse_spec(
        {"data": {"source": {"hostPath": str(data)}}, "output": {"location": {"hostPath": "/x"}}}
    )
    layout = scan_layout(str(data), spec.data)
    n = len(layout.train)

    def fresh_model() -> keras.Model:
        keras.utils.set_random_seed(args.seed)
        base = modeling.application_base("MobileNetV2", str(weights), args.size)
        model = modeling.build_model(base, 10, spec.model.head, args.size, "mobilenet_v2")
        modeling.set_fine_tune(model, "block_13_expand")
        modeling.compile_model(model, "adam", 1e-5, binary=False)
        return model

    def images_per_second(fit: Any) -> float:
        timer = EpochTimer()
        fit(timer)
        return n / float(np.median(timer.seconds[1:]))

    images = image_dataset(layout.train, args.size, binary=False, cache=True)
    shuffled = shuffled_images(layout.train, args.size, binary=False, seed=args.seed, cached=images)
    pipeline = training_batches(shuffled, args.batch, None)
    model = fresh_model()
    ours_rate = images_per_second(
        lambda t: model.fit(pipeline, epochs=args.ft_epochs, verbose=0, callbacks=[t])
    )

    x = np.stack([img.numpy() for img, _ in images]).astype(np.float32)
    y = np.asarray(layout.train.labels, dtype=np.int32)
    model = fresh_model()
    raw_rate = images_per_second(
        lambda t: model.fit(x, y, batch_size=args.batch, epochs=args.ft_epochs, verbose=0, callbacks=[t])
    )
    return {"oursImagesPerSecond": ours_rate, "rawImagesPerSecond": raw_rate, "ratio": ours_rate / raw_rate}


SIDES = ("ours-plain", "tutorial-plain", "ours-augmented", "tutorial-augmented", "finetune")


def run_side(side: str, data: Path, weights: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One side (see SIDES) in this process; what `--side` runs in a fresh interpreter."""
    if side == "finetune":
        return fine_tuning_throughput(data, weights, args)
    who, setting = side.split("-")
    augment = setting == "augmented"
    if who == "ours":
        return ours(data, work / f"out-{setting}", weights, args, augment)
    return tutorial(data, weights, args, augment)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time (the lower middle one for an even count), with every run's time."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "runs": [run["seconds"] for run in runs]}


def side_result(work: Path, side: str) -> Path:
    """Where a `--side` run leaves its result for the parent."""
    return work / f"{side}.json"


def in_fresh_process(side: str, work: Path, argv: list[str]) -> dict[str, Any]:
    """Run `side` in a new interpreter (same arguments) and read back its result."""
    command = [sys.executable, __file__, *argv, "--side", side, "--work", str(work)]
    subprocess.run(command, check=True)
    return json.loads(side_result(work, side).read_text())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=96, help="image side (MobileNetV2 needs >= 32)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs, as the tutorial trains")
    parser.add_argument("--batch", type=int, default=32, help="batch size (the tutorial's)")
    parser.add_argument("--lr", type=float, default=1e-3, help="head learning rate, both pipelines")
    parser.add_argument("--views", type=int, default=4, help="our cachedViews in the augmented comparison")
    parser.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs per side (1 warm-up)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--base-epochs", type=int, default=2, help="training of the shared base (see save_base)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each side per setting (medians are reported)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["plain", "augmented", "finetune"])
    parser.add_argument("--out", default="bench/trainer-results.json", help="JSON results file")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side:
        data, weights = args.work / "digits", args.work / "mobilenetv2-digits.weights.h5"
        result = run_side(args.side, data, weights, args.work, args)
        side_result(args.work, args.side).write_text(json.dumps(result))
        return 0

    work = Path(tempfile.mkdtemp(prefix="tj-bench-"))
    data = work / "digits"
    summary = write_digits(data, size=args.size, seed=0)
    weights = work / "mobilenetv2-digits.weights.h5"
    save_base(args.size, data, weights, args)
    results: dict[str, Any] = {
        "config": {**vars(args), "images": {s: summary.total(s) for s in ("train", "val", "test")}},
        "cpus": len(os.sched_getaffinity(0)),
        "loadAverageAtStart": os.getloadavg(),
    }
    del results["config"]["side"], results["config"]["work"]
    rows = []
    for name in ("plain", "augmented"):
        if name in args.skip:
            continue
        # Alternated, so a slow spell of the shared machine hits both sides alike; medians reported.
        pairs = [
            (in_fresh_process(f"ours-{name}", work, argv), in_fresh_process(f"tutorial-{name}", work, argv))
            for _ in range(args.repeat)
        ]
        mine, theirs = median_run([m for m, _ in pairs]), median_run([t for _, t in pairs])
        speedup = theirs["seconds"] / mine["seconds"]
        results[name] = {
            "ours": mine,
            "tutorial": theirs,
            "speedup": speedup,
            "speedupPerPair": [t["seconds"] / m["seconds"] for m, t in pairs],
        }
        rows.append(
            f"{'FE ' + name:<16} {mine['seconds']:>8.1f}s {theirs['seconds']:>9.1f}s {speedup:>7.2f}x "
            f"{mine['testAccuracy']:>8.3f} {theirs['testAccuracy']:>9.3f}   "
            + " ".join(f"{r:.2f}x" for r in results[name]["speedupPerPair"])
        )
    if "finetune" not in args.skip:
        results["fineTuning"] = in_fresh_process("finetune", work, argv)
    print(f"{'':<16} {'ours':>9} {'tutorial':>10} {'speedup':>8} {'acc ours':>8} {'acc tut.':>9}   per pair")
    print("\n".join(rows))
    for name in ("plain", "augmented"):
        if name in results:
            phases = ", ".join(f"{k} {v:.1f}s" for k, v in results[name]["ours"]["phases"].items())
            print(f"ours, FE {name}: {phases}")
    if "fineTuning" in results:
        ft = results["fineTuning"]
        print(
            f"fine-tuning images/s: ours {ft['oursImagesPerSecond']:.1f}, raw model.fit on tensors "
            f"{ft['rawImagesPerSecond']:.1f}, ratio {ft['ratio']:.2f}x"
        )
    results["loadAverageAtEnd"] = os.getloadavg()
    print(f"load average: start {results['loadAverageAtStart']}, end {results['loadAverageAtEnd']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
