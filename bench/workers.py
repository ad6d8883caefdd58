"""Benchmark: fine-tuning images/s on 2 workers against 1, and the bytes each worker exchanges per step.

Not a test; a script. The same fine-tuning job (scikit-learn's digits 5-9 at --size, MobileNetV2
without pretrained weights from `block_13_expand` on, no augmentation, --epochs epochs) runs as the
trainer CLI on one worker with batches of 2 x --batch and on two worker processes (the real
MultiWorkerMirroredStrategy over loopback, as two pods of an Indexed Job) with --batch each: the same
global batch, the same steps. Images/s is training images over the epochs' time, from the trainer's
own per-epoch seconds (the median epoch, after the first, which traces), each side --repeat times,
alternated; the ratio is 2 workers over 1.

Bytes per step: the gradients of the trainable variables all-reduced each step (float32), and what
ring all-reduce sends of them per worker, 2 (N-1)/N times their size, plus the three all-reduced
scalars of the step's metrics. Counted from the model the job trains, not measured on the wire.

On this machine both workers share the same 2 cores, so 2 workers cannot be faster than 1: the
figure measures the cost of the collectives and of the second process, not a speed-up. On a GPU
cluster each worker has its own devices.

Run: `.venv/bin/python bench/workers.py [--size 64] [--epochs 3] [--batch 16] [--repeat 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for part in ("sdk", "operator", "trainer_image", "testing"):
    sys.path.insert(0, str(ROOT / part))

from transferjob.datasets import write_digits  # noqa: E402
from transferjob.progress import EpochEnded, decode  # noqa: E402
from transferjob_testing.cluster.controlplane import free_port  # noqa: E402

FINE_TUNE_AT = "block_13_expand"


def spec(data: Path, out: Path, size: int, epochs: int, batch: int) -> dict[str, Any]:
    return {
        "mode": "FineTuning",
        "model": {"base": "MobileNetV2", "weights": "none", "imageSize": size, "fineTuneAt": FINE_TUNE_AT},
        "data": {"source": {"hostPath": str(data)}, "augmentation": {"enabled": False}, "cache": "memory"},
        "training": {
            "epochs": epochs,
            "batchSize": batch,
            "learningRate": 1e-3,
            "earlyStopping": {"enabled": False},
        },
        "output": {"location": {"hostPath": str(out)}, "savedModel": False},
    }


def run(work: Path, body: dict[str, Any], workers: int) -> list[float]:
    """Epoch seconds of the chief, after the first epoch."""
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(body))
    hosts = ",".join(f"127.0.0.1:{free_port()}" for _ in range(workers))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = []
    for index in range(workers):
        extra = {"TRANSFERJOB_WORKER_HOSTS": hosts, "JOB_COMPLETION_INDEX": str(index)} if workers > 1 else {}
        command = [sys.executable, "-m", "transferjob_trainer", "--spec", str(spec_file)]
        command += ["--termination-log", str(work / f"term-{index}")]
        procs.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, **extra}
            )
        )
    outputs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode}):\n{err[-3000:]}")
    events = [decode(line) for line in outputs[0][0].splitlines()]
    return [e.metrics.seconds for e in events if isinstance(e, EpochEnded)][1:]


def exchanged_bytes(size: int, workers: int) -> dict[str, float]:
    """Gradient bytes a step all-reduces, and what ring all-reduce sends per worker."""
    import keras

    from transferjob.models import HeadSpec
    from transferjob_trainer import modeling

    base, preprocess = modeling.build_base("MobileNetV2", "none", size)
    model = modeling.build_model(base, 5, HeadSpec(), size, preprocess)
    modeling.set_fine_tune(model, FINE_TUNE_AT)
    grads = sum(int(keras.ops.size(v)) for v in model.trainable_variables) * 4
    return {"gradientBytes": grads, "ringBytesPerWorker": round(2 * (workers - 1) / workers * grads + 3 * 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="per worker; 1 worker uses twice this")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "workers-results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_digits(root / "data", digits=range(5, 10), size=args.size, seed=0)
        n_train = sum(1 for _ in (root / "data" / "train").rglob("*.png"))
        rates: dict[str, list[float]] = {"1": [], "2": []}
        for i in range(args.repeat):
            for workers in (1, 2) if i % 2 == 0 else (2, 1):
                work = root / f"run-{i}-{workers}"
                work.mkdir()
                batch = args.batch * (2 if workers == 1 else 1)
                seconds = run(work, spec(root / "data", work / "out", args.size, args.epochs, batch), workers)
                rates[str(workers)].append(n_train / statistics.median(seconds))
                print(f"{workers} worker(s): {rates[str(workers)][-1]:.1f} images/s", flush=True)
    one, two = statistics.median(rates["1"]), statistics.median(rates["2"])
    result = {
        "config": vars(args),
        "cpus": os.cpu_count(),
        "trainImages": n_train,
        "imagesPerSecond": {"1": round(one, 1), "2": round(two, 1)},
        "runs": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "ratio2to1": round(two / one, 3),
        **exchanged_bytes(args.size, 2),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
