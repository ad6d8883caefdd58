"""The digits every test tier trains on: digits 5-9 to learn and a small CNN pretrained on digits 0-4.

ImageNet weights cannot be downloaded here, so this small CNN is the "pretrained" network of the tests,
the demo and the quickstart. Nothing here imports the test cluster: `cluster` (whose `up` writes the
quickstart's data) and `harness` both use it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: A split for comparing two models on the digits: 314 test images of digits 5-9 (one is 0.32 % of
#: the accuracy) instead of the default split's 135 (0.74 %), where one or two images decide.
WIDE_TEST_SPLIT = "0.5,0.15,0.35"


def make_digits(root: Path, epochs: int = 6, split: str | None = None) -> tuple[Path, Path]:
    """Digits 5-9 at 32x32 (the transfer task) and a small CNN pretrained on digits 0-4 (the source).

    `split` ("train,val,test" fractions) applies to the digits 5-9; the default is the datasets CLI's.
    """
    target = root / "digits-5-9"
    source_data = root / "digits-0-4"
    model = root / "source.keras"
    python = sys.executable
    if not (target / "train").is_dir():
        split_args = ["--split", split] if split else []
        _run(
            [
                python,
                "-m",
                "transferjob.datasets",
                "digits",
                str(target),
                "--digits",
                "5-9",
                "--size",
                "32",
                *split_args,
            ]
        )
    if not model.is_file():
        if not (source_data / "train").is_dir():
            _run(
                [
                    python,
                    "-m",
                    "transferjob.datasets",
                    "digits",
                    str(source_data),
                    "--digits",
                    "0-4",
                    "--size",
                    "32",
                ]
            )
        _run(
            [
                python,
                "-m",
                "transferjob_trainer.pretrain",
                "--data",
                str(source_data),
                "--out",
                str(model),
                "--epochs",
                str(epochs),
                "--size",
                "32",
            ]
        )
    return target, model


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
