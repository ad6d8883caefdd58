"""Fine-tuning on this machine, continuing example 01's model (exercise 2 of the reference workflow).

`client.fine_tune(from_job=...)` builds the FineTuning job from the first one: same data, base and head,
its exported model as the starting point, the last layers of the base unfrozen (from the small CNN's
`conv3` here; `block_13_expand` is the default for MobileNetV2), Adam at 1e-4 for this tiny network
(1e-5 is the default), early stopping restoring the best epoch.

    python examples/02-local-fine-tuning/example.py
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from transferjob import JobFailedError, Location, TransferJobClient
from transferjob.plot import plot_curves

SOURCE = "digits-features"
NAME = "digits-finetune"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("out/examples"))
    workdir = parser.parse_args().workdir.resolve()
    client = TransferJobClient("local")
    first = client.wait(SOURCE)  # run example 01 first
    output = workdir / NAME
    if any(job.metadata.name == NAME for job in client.list()):
        client.delete(NAME)
    shutil.rmtree(output, ignore_errors=True)  # the previous run's job owned it (see example 01)
    name = client.fine_tune(
        from_job=SOURCE,
        name=NAME,
        epochs=5,
        fine_tune_at="conv3",
        learning_rate=1e-4,
        output=Location(host_path=str(output)),
    )
    try:
        job = client.wait(name, progress=True)
    except JobFailedError as error:
        print(f"fine-tuning failed: {error.reason}: {error.message}")
        return 1
    assert first.status and first.status.test and job.status and job.status.test
    print(
        f"test accuracy: feature extraction {first.status.test.accuracy:.4f}, "
        f"fine-tuning {job.status.test.accuracy:.4f} (best epoch {job.status.best_epoch})"
    )
    plot_curves(job, workdir / "finetune-curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
