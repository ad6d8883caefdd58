"""Benchmark: the trainer's memory at 2k, 20k and 200k images, and the streaming pipeline's images/s.

Not a test; a script. Two questions about the trainer at platform scale (issue 15):

1. **Is memory bounded by the batch, not the data?** Feature extraction and fine-tuning each run as a
   user's job would (`run.run`: image check, model, feature pass or epochs, test, export) on generated
   data sets of 2,000, 20,000 and 200,000 images, each in a fresh interpreter whose peak RSS the parent
   reads when it ends (`os.wait4`: the child's own `ru_maxrss`). The peak at the largest size must be
   within 1.5x of the peak at the smallest. `data.cache: none`, the streaming path: `auto` caches the
   decoded images when they take at most half the free memory (at 32x32 even 200k images, 614 MB, do),
   which is memory the user asked for, not memory the trainer needs. A thread also samples VmRSS every
   0.2 s and attributes it to the phase under way, to say where the peak is.
2. **Is the streaming pipeline fast?** The fine-tuning input pipeline (`pipeline.shuffled_images`
   without a cache + `training_batches`: file list shuffled every epoch, parallel decode, batch, float,
   prefetch) against a bare `tf.data` loop over the same files (read, `decode_png`, resize, batch,
   prefetch, autotuned), images/s of whole passes over the 16,000 training files of the 20k set
   (`--pipeline-images`), after a warm-up pass, alternated, medians compared; target 0.8x.

The images are 32x32 RGB PNGs of scikit-learn's digits rendered with random nuisance (size, place,
angle, grey levels, strokes, noise: `transferjob.datasets.render_with_nuisance`), 10 classes, split
80/10/10. They are generated once into `--cache` (200,000 files, about 2 minutes on 2 cores) and every
size links the first images of each class from there. The model is MobileNetV2 without pretrained
weights (features of 1280 floats; memory does not depend on the weights), batch 32, no augmentation
(with it, feature extraction computes 4 views: 4 times the pass, the same memory); feature extraction
trains 2 head epochs, fine-tuning 1 epoch from `block_13_expand`.

Run: `.venv/bin/python bench/scale.py [--sizes 2000 20000 200000] [--out bench/scale-results.json]`
(about 50 minutes on 2 cores with 200k; `--sizes 2000 20000` takes about 5).
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
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

#: The peak RSS of the largest run may be at most this many times the smallest run's.
FLAT_WITHIN = 1.5
#: The streaming pipeline's images/s must be at least this share of the bare loop's.
PIPELINE_TARGET = 0.8
CLASSES = 10
SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
SIDES = ("fe", "ft", "pipeline")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transferjob" / "bench-scale"


def _render_class(args: tuple[Path, int, int, int, int]) -> int:
    """Write images `start` to `end` of class `digit` into `folder` (a worker process's share)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from transferjob.datasets import render_with_nuisance

    folder, digit, start, end, size = args
    digits = load_digits()
    scans = np.asarray(digits.images)[np.asarray(digits.target) == digit]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, end):
        pixels = render_with_nuisance(scans[i % len(scans)], size, np.random.default_rng([digit, i]))
        Image.fromarray(pixels, mode="RGB").save(folder / f"{i:06d}.png")
    return end - start


def image_pool(cache: Path, per_class: int, size: int) -> Path:
    """`per_class` images of each digit under `cache/pool-<size>/<digit>/`, generated once and kept."""
    pool = cache / f"pool-{size}"
    done = pool / "complete.json"
    if done.exists() and json.loads(done.read_text())["perClass"] >= per_class:
        return pool
    started = time.perf_counter()
    chunk = 2000
    jobs = [
        (pool / str(digit), digit, start, min(start + chunk, per_class), size)
        for digit in range(CLASSES)
        for start in range(0, per_class, chunk)
    ]
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as workers:
        written = sum(workers.map(_render_class, jobs))
    done.write_text(json.dumps({"perClass": per_class, "size": size}))
    print(f"generated {written} images in {time.perf_counter() - started:.0f}s into {pool}", file=sys.stderr)
    return pool


def data_set(cache: Path, pool: Path, images: int) -> Path:
    """A data set of `images` images (train/val/test, one folder per digit): hard links into the pool."""
    root = cache / f"images-{images}"
    if (root / "complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    per_class = images // CLASSES
    n_train, n_val = int(per_class * SPLIT["train"]), int(per_class * SPLIT["val"])
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, per_class)}
    for digit in range(CLASSES):
        for split, (start, end) in bounds.items():
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            for i in range(start, end):
                os.link(pool / str(digit) / f"{i:06d}.png", folder / f"{i:06d}.png")
    (root / "complete").touch()
    return root


class PhaseRss(io.StringIO):
    """The trainer's event stream: notes each phase as it starts, and samples VmRSS meanwhile, so the
    run's peak can be placed in a phase."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__()
        self.start = time.perf_counter()
        self.phase = "setup"
        self.peaks: dict[str, int] = {}
        self.marks: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def write(self, text: str) -> int:
        for line in text.splitlines():
            event = json.loads(line)
            if event["event"] == "phase":
                self.phase = event["phase"]
                self.marks.append((self.phase, time.perf_counter() - self.start))
        return len(text)

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            rss = vm_rss_bytes()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {phase: round(rss / 2**20, 1) for phase, rss in self.peaks.items()}

    def seconds(self, total: float) -> dict[str, float]:
        ends = [t for _, t in self.marks[1:]] + [total]
        return {name: round(end - t, 1) for (name, t), end in zip(self.marks, ends, strict=True)}


def vm_rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def job(data: Path, out: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One trainer run, as a user's job would go (`run.run`), in this process."""
    from transferjob.models import parse_spec
    from transferjob_trainer.paths import resolve_paths
    from transferjob_trainer.report import Reporter
    from transferjob_trainer.run import run

    fine_tuning = mode == "ft"
    spec = parse_spec(
        {
            "mode": "FineTuning" if fine_tuning else "FeatureExtraction",
            "model": {
                "base": "MobileNetV2",
                "weights": "none",
                "imageSize": args.size,
                **({"fineTuneAt": "block_13_expand"} if fine_tuning else {}),
            },
            "data": {"source": {"hostPath": str(data)}, "cache": "none", "augmentation": {"enabled": False}},
            "training": {
                "epochs": 1 if fine_tuning else 2,
                "batchSize": args.batch,
                "earlyStopping": {"enabled": False},
            },
            "output": {"location": {"hostPath": str(out)}},
        }
    )
    shutil.rmtree(out, ignore_errors=True)
    stream = PhaseRss()
    started = time.perf_counter()
    finished = run(spec, resolve_paths(spec, None, None, None), Reporter(stream, None))
    seconds = time.perf_counter() - started
    peaks = stream.stop()
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": round(seconds, 1),
        "phases": stream.seconds(seconds),
        "peakRssMiBByPhase": peaks,
        "testAccuracy": finished.test.accuracy,
    }


def pipeline_throughput(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of whole passes over the training files: our streaming pipeline vs a bare tf.data loop."""
    import tensorflow as tf

    from transferjob.models import DataSpec
    from transferjob_trainer.layout import scan_layout
    from transferjob_trainer.pipeline import shuffled_images, training_batches

    layout = scan_layout(str(data), DataSpec.model_validate({"source": {"hostPath": str(data)}}))
    files = list(layout.train.files)

    def ours(epoch: int) -> tf.data.Dataset:
        images = shuffled_images(layout.train, args.size, binary=False, seed=epoch, cached=None)
        return training_batches(images, args.batch, None)

    def bare(_epoch: int) -> tf.data.Dataset:
        def load(path: tf.Tensor) -> tf.Tensor:
            return tf.image.resize(tf.io.decode_png(tf.io.read_file(path), channels=3), [args.size] * 2)

        ds = tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(args.batch).prefetch(tf.data.AUTOTUNE)

    def rate(make: Any, epoch: int) -> float:
        started, n = time.perf_counter(), 0
        for batch in make(epoch):
            n += int(batch[0].shape[0]) if isinstance(batch, tuple) else int(batch.shape[0])
        assert n == len(files)
        return n / (time.perf_counter() - started)

    rate(bare, 0)  # warm-up: the files into the page cache, TensorFlow's kernels set up
    runs: dict[str, list[float]] = {"ours": [], "bare": []}
    for i in range(args.pipeline_repeat):  # alternated, and the first side swaps each round
        for name in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
            runs[name].append(rate(ours if name == "ours" else bare, i))
    ours_rate, bare_rate = float(np.median(runs["ours"])), float(np.median(runs["bare"]))
    return {
        "images": len(files),
        "oursImagesPerSecond": round(ours_rate, 1),
        "bareImagesPerSecond": round(bare_rate, 1),
        "ratio": round(ours_rate / bare_rate, 3),
        "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
    }


def in_fresh_process(side: str, images: int, work: Path, argv: list[str]) -> dict[str, Any]:
    """Run one side in a new interpreter; its result, with the peak RSS the kernel kept for it."""
    result_file = work / f"{side}-{images}.json"
    command = [sys.executable, __file__, *argv, "--side", side, "--images", str(images), "--work", str(work)]
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    result = json.loads(result_file.read_text())
    result["peakRssMiB"] = round(usage.ru_maxrss / 1024, 1)  # ru_maxrss is in KiB on Linux
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 200000], help="images per run")
    parser.add_argument("--size", type=int, default=32, help="image side (MobileNetV2 needs >= 32)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--pipeline-images", type=int, default=20000, help="data set of the pipeline comparison"
    )
    parser.add_argument("--pipeline-repeat", type=int, default=6, help="passes of each pipeline")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fe", "ft", "pipeline"])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="generated images, kept")
    parser.add_argument("--out", default="bench/scale-results.json", help="JSON results file")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side:
        data = args.cache / f"images-{args.images}"
        if args.side == "pipeline":
            result = pipeline_throughput(data, args)
        else:
            result = job(data, args.work / f"out-{args.side}-{args.images}", args.side, args)
        (args.work / f"{args.side}-{args.images}.json").write_text(json.dumps(result))
        return 0

    sizes = sorted(args.sizes)
    pool = image_pool(args.cache, max(sizes) // CLASSES, args.size)
    for images in sizes:
        data_set(args.cache, pool, images)
    work = Path(tempfile.mkdtemp(prefix="tj-bench-scale-"))
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpus": len(os.sched_getaffinity(0)),
        "loadAverageAtStart": os.getloadavg(),
    }
    for key in ("side", "images", "work"):
        del results["config"][key]
    for mode in ("fe", "ft"):
        if mode in args.skip:
            continue
        runs = {}
        for images in sizes:
            runs[str(images)] = in_fresh_process(mode, images, work, argv)
            print(f"{mode} {images}: {runs[str(images)]}", file=sys.stderr)
        ratio = runs[str(sizes[-1])]["peakRssMiB"] / runs[str(sizes[0])]["peakRssMiB"]
        results[mode] = {"runs": runs, "peakRatio": round(ratio, 3), "flat": ratio <= FLAT_WITHIN}
    if "pipeline" not in args.skip:
        images = args.pipeline_images
        data_set(args.cache, image_pool(args.cache, images // CLASSES, args.size), images)
        results["pipeline"] = in_fresh_process("pipeline", images, work, argv)
        results["pipeline"]["met"] = results["pipeline"]["ratio"] >= PIPELINE_TARGET
    results["loadAverageAtEnd"] = os.getloadavg()
    shutil.rmtree(work, ignore_errors=True)

    for mode, name in (("fe", "feature extraction"), ("ft", "fine-tuning")):
        if mode in results:
            runs = results[mode]["runs"].items()
            row = ", ".join(f"{n}: {r['peakRssMiB']:.0f} MiB ({r['seconds']:.0f}s)" for n, r in runs)
            verdict = "flat" if results[mode]["flat"] else "NOT flat"
            print(f"{name} peak RSS {row}; largest/smallest {results[mode]['peakRatio']:.2f}x ({verdict})")
    if "pipeline" in results:
        p = results["pipeline"]
        print(
            f"pipeline over {p['images']} files: ours {p['oursImagesPerSecond']:.0f} images/s, bare tf.data "
            f"{p['bareImagesPerSecond']:.0f} images/s, {p['ratio']:.2f}x (target {PIPELINE_TARGET}x)"
        )
    print(f"load average: start {results['loadAverageAtStart']}, end {results['loadAverageAtEnd']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
