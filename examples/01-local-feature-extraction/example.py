"""Feature extraction on this machine: a new head on a frozen pretrained CNN, on handwritten digits 5-9.

ImageNet weights cannot be downloaded everywhere, so the pretrained network here is one the example
trains itself: a small CNN on digits 0-4 (the source task). Transfer learning then trains a new head on
its frozen features for digits 5-9 (the target task). On a machine that can download ImageNet weights,
set `"base": "MobileNetV2", "weights": "imagenet", "imageSize": 96` instead: nothing else changes.

Writes scikit-learn's digits as 32x32 PNGs (no download), submits a local TransferJob, prints each epoch
as it lands on the job's status, and saves the learning curves. The job runs in a detached process: you
could stop this script and pick the job up again with `tj --local watch digits-features`.

    python examples/01-local-feature-extraction/example.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from transferjob import TransferJob, TransferJobClient, TransferJobSpec
from transferjob.client import EpochCompleted, PhaseChanged
from transferjob.datasets import main as write_dataset
from transferjob.plot import plot_curves
from transferjob_trainer.pretrain import main as pretrain

NAME = "digits-features"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("out/examples"))
    workdir = parser.parse_args().workdir.resolve()
    data = workdir / "digits-5-9"
    if not data.exists():
        write_dataset(["digits", str(data), "--digits", "5-9", "--size", "32"])
    source = workdir / "source.keras"
    if not source.exists():  # the "pretrained" network: a small CNN trained on digits 0-4
        write_dataset(["digits", str(workdir / "digits-0-4"), "--digits", "0-4", "--size", "32"])
        pretrain(["--data", str(workdir / "digits-0-4"), "--out", str(source), "--epochs", "6"])

    spec = TransferJobSpec.model_validate(
        {
            "model": {"base": str(source), "imageSize": 32},
            "data": {"source": {"hostPath": str(data)}, "augmentation": {"enabled": False}},
            # A head on this small CNN learns faster than on MobileNetV2: 1e-3, not the 1e-4 default.
            "training": {"epochs": 5, "batchSize": 32, "learningRate": 1e-3},
            "output": {"location": {"hostPath": str(workdir / NAME)}},
            "resources": {"gpus": 0},
        }
    )
    client = TransferJobClient("local")
    # Examples are re-runnable: the previous run's job goes, and its output folder with it, which that
    # job owns (owner.json): a new job would fail there with OutputInUse, not train over its model.
    if any(job.metadata.name == NAME for job in client.list()):
        client.delete(NAME)
    shutil.rmtree(workdir / NAME, ignore_errors=True)
    name = client.submit(TransferJob(spec=spec), name=NAME)
    print(f"submitted {name}")
    for event in client.watch(name):
        if isinstance(event, EpochCompleted):
            m = event.metrics
            print(f"epoch {event.epoch}/{event.epochs}: loss {m.loss:.3f}, val_accuracy {m.val_accuracy:.3f}")
        elif isinstance(event, PhaseChanged):
            print(f"{event.phase.value} {event.reason}")
    job = client.wait(name)  # returns at once now; raises JobFailedError(reason, message) on failure
    assert job.status is not None and job.status.test is not None
    model = job.status.model.uri if job.status.model else "?"
    print(f"test accuracy {job.status.test.accuracy:.4f}, model at {model}")
    plot_curves(job, workdir / "features-curves.png")
    print(f"curves: {workdir / 'features-curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
