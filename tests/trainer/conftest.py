"""Shared fixtures: the digits written once per session, pretrained source networks, a trainer runner;
and what the exported SavedModel answered, in the label order.

Every end-to-end test runs the real CLI (`python -m transferjob_trainer`) in a subprocess, exactly as the
operator and the local backend do, and reads its protocol lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from transferjob.datasets import write_digits
from transferjob.progress import EpochEnded, Failed, Finished, Started, decode

#: Per-class training images of the small target set (the "few labelled images" transfer case).
SMALL_TRAIN_PER_CLASS = 4
IMAGE_SIZE = 32
#: The split of the wide-test target set: 314 test images of digits 5-9, so that one image is 0.32 % of
#: the test accuracy (the default split leaves 135: one image is 0.74 %).
WIDE_TEST_SPLIT = (0.5, 0.15, 0.35)
#: Renderings of each training image of the nuisance source (digits 0-4): 3060 training images.
NUISANCE_SOURCE_VARIANTS = 4
NUISANCE_SOURCE_EPOCHS = 20


@dataclass
class TrainerRun:
    """What one trainer process did."""

    rc: int
    events: list[Any]
    stdout: str
    stderr: str
    termination: str | None = None
    non_protocol_stdout: list[str] = field(default_factory=list)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def final(self) -> Finished | Failed:
        last = self.events[-1]
        assert isinstance(last, Finished | Failed), self.stderr[-3000:]
        return last

    @property
    def finished(self) -> Finished:
        final = self.final
        assert isinstance(final, Finished), f"{final}\n{self.stderr[-3000:]}"
        return final

    @property
    def started(self) -> Started:
        return self.of(Started)[0]

    @property
    def epochs(self) -> list[int]:
        return [e.metrics.epoch for e in self.of(EpochEnded)]


def trainer_command(spec_file: Path, *args: str, termination_log: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "transferjob_trainer",
        "--spec",
        str(spec_file),
        "--termination-log",
        str(termination_log),
        *args,
    ]


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    return env


def parse_run(rc: int, stdout: str, stderr: str, termination_log: Path) -> TrainerRun:
    events, other = [], []
    for line in stdout.splitlines():
        event = decode(line)
        if event is None:
            other.append(line)
        else:
            events.append(event)
    termination = termination_log.read_text() if termination_log.exists() else None
    return TrainerRun(rc, events, stdout, stderr, termination, other)


def run_spec_file(spec_file: Path, *args: str, termination_log: Path, timeout: float = 600) -> TrainerRun:
    """The trainer CLI on a spec file, as a pod runs it; its output parsed."""
    proc = subprocess.run(
        trainer_command(spec_file, *args, termination_log=termination_log),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=trainer_env(),
    )
    return parse_run(proc.returncode, proc.stdout, proc.stderr, termination_log)


@pytest.fixture
def run_trainer(tmp_path: Path):
    """Run the trainer CLI on a spec dict; returns a TrainerRun."""
    counter = iter(range(1000))

    def run(spec: dict[str, Any], *args: str, timeout: float = 600) -> TrainerRun:
        n = next(counter)
        spec_file = tmp_path / f"spec-{n}.json"
        spec_file.write_text(json.dumps(spec))
        termination_log = tmp_path / f"termination-{n}.log"
        return run_spec_file(spec_file, *args, termination_log=termination_log, timeout=timeout)

    return run


@dataclass(frozen=True)
class Digits:
    source: Path  # digits 0-4, full split
    target: Path  # digits 5-9, full split
    small_target: Path  # digits 5-9 with SMALL_TRAIN_PER_CLASS training images per class
    wide_test: Path  # digits 5-9 split WIDE_TEST_SPLIT: 448 train, 134 val, 314 test images


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "d04", digits=range(5), size=IMAGE_SIZE, seed=0)
    write_digits(root / "d59", digits=range(5, 10), size=IMAGE_SIZE, seed=0)
    write_digits(root / "d59-wide-test", digits=range(5, 10), size=IMAGE_SIZE, seed=0, split=WIDE_TEST_SPLIT)
    small = root / "d59-small"
    shutil.copytree(root / "d59", small)
    for class_dir in sorted((small / "train").iterdir()):
        for extra in sorted(class_dir.iterdir())[SMALL_TRAIN_PER_CLASS:]:
            extra.unlink()
    return Digits(root / "d04", root / "d59", small, root / "d59-wide-test")


@dataclass(frozen=True)
class SourceModels:
    pretrained: Path  # small CNN trained on digits 0-4
    untrained: Path  # the same architecture, random init
    pretrain_val_accuracy: float


@pytest.fixture(scope="session")
def source_models(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> SourceModels:
    """Pretrain once per session (in this process: TensorFlow is imported once for all fixtures)."""
    from transferjob_trainer.pretrain import pretrain

    root = tmp_path_factory.mktemp("source")
    summary = pretrain(
        str(digits.source), str(root / "source.keras"), epochs=15, image_size=IMAGE_SIZE, seed=0
    )
    pretrain(str(digits.source), str(root / "scratch.keras"), epochs=0, image_size=IMAGE_SIZE, seed=1)
    return SourceModels(root / "source.keras", root / "scratch.keras", float(summary["valAccuracy"]))  # type: ignore[arg-type]


def make_spec(
    data_dir: Path, out_dir: Path, *, mode: str = "FeatureExtraction", model: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    """A spec dict (wire form) with the test defaults: no augmentation, short runs, small batches."""
    spec: dict[str, Any] = {
        "mode": mode,
        "model": {"imageSize": IMAGE_SIZE, **model},
        "data": {"source": {"hostPath": str(data_dir)}, "augmentation": {"enabled": False}},
        "training": {"batchSize": 16},
        "output": {"location": {"hostPath": str(out_dir)}, "savedModel": False},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


@dataclass(frozen=True)
class NuisanceModels:
    """Digits rendered with nuisance (`write_digits(nuisance=True)`) and the source pretrained on them."""

    target: Path  # digits 5-9 with nuisance, split WIDE_TEST_SPLIT (448 train, 134 val, 314 test images)
    pretrained: Path  # small CNN trained on digits 0-4 with nuisance (NUISANCE_SOURCE_VARIANTS each)
    untrained: Path  # the same architecture, random init: the from-scratch baseline
    pretrain_val_accuracy: float


@pytest.fixture(scope="session")
def nuisance_models(tmp_path_factory: pytest.TempPathFactory) -> NuisanceModels:
    """Write the nuisance digits and pretrain on 0-4 once per session (about 2 minutes on 2 CPU cores)."""
    from transferjob_trainer.pretrain import pretrain

    root = tmp_path_factory.mktemp("nuisance")
    source, target = root / "d04", root / "d59"
    write_digits(
        source, digits=range(5), size=IMAGE_SIZE, seed=0, nuisance=True, variants=NUISANCE_SOURCE_VARIANTS
    )
    write_digits(target, digits=range(5, 10), size=IMAGE_SIZE, seed=0, split=WIDE_TEST_SPLIT, nuisance=True)
    summary = pretrain(
        str(source), str(root / "source.keras"), epochs=NUISANCE_SOURCE_EPOCHS, image_size=IMAGE_SIZE, seed=0
    )
    pretrain(str(source), str(root / "scratch.keras"), epochs=0, image_size=IMAGE_SIZE, seed=1)
    return NuisanceModels(
        target,
        root / "source.keras",
        root / "scratch.keras",
        float(summary["valAccuracy"]),  # type: ignore[arg-type]
    )


def served_probabilities(outputs: dict[str, Any], classes: list[str]) -> np.ndarray:
    """[batch, classes] probabilities in the label order, from the signatures' ranked names and scores."""
    names = outputs["classes"].numpy().astype(str)
    scores = outputs["scores"].numpy()
    table = np.zeros(scores.shape, dtype=np.float32)
    for row, (ranked, values) in enumerate(zip(names, scores, strict=True)):
        assert sorted(ranked) == sorted(classes)
        assert list(values) == sorted(values, reverse=True)
        for name, value in zip(ranked, values, strict=True):
            table[row, classes.index(name)] = value
    return table


#: Images per split of the colour-coded splits (`color_splits`): several shards of 5 each.
COLOR_COUNTS = {"train": 23, "val": 7, "test": 6}


def color_splits(root: Path) -> dict[str, Any]:
    """Tiny solid-colour PNGs whose colour names them: red is 8 x the image's index in its split, green
    the split, blue 60 x its label (3 classes). Returns the `layout.Split` of each split, in file order.

    A "base" that averages the pixels (`mean_colour_features`) then gives features that say exactly
    which image they came from, so a test can follow every vector through shards, orders and views.
    """
    from PIL import Image

    from transferjob_trainer.layout import Split

    splits = {}
    for green, (name, n) in enumerate(COLOR_COUNTS.items()):
        files, labels = [], []
        for i in range(n):
            path = root / name / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 3), (8 * i, 80 * green, 60 * (i % 3)), np.uint8)).save(path)
            files.append(str(path))
            labels.append(i % 3)
        splits[name] = Split(name, str(root / name), tuple(files), tuple(labels))
    return splits


def mean_colour_features(batches: Any, on_batch: Any) -> Any:
    """An `features.Extract` that averages each image's pixels: its features are its colour."""
    import tensorflow as tf

    for batch in batches:
        features = tf.reduce_mean(batch, axis=[1, 2]).numpy()
        on_batch(len(features))
        yield features
