"""Fixtures for the SDK tests: a private TJ_HOME, scripted trainer runs and job manifests."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from transferjob import TransferJob, TransferJobClient

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")


@pytest.fixture()
def tj_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private local-jobs home; local jobs run the scripted trainer unless a test says otherwise."""
    home = tmp_path / "tj-home"
    monkeypatch.setenv("TJ_HOME", str(home))
    monkeypatch.setenv("TJ_TRAINER", f"{sys.executable} {FAKE_TRAINER}")
    return home


@pytest.fixture()
def local_client(tj_home: Path) -> TransferJobClient:
    return TransferJobClient("local")


@pytest.fixture()
def make_job(tmp_path: Path) -> Callable[..., TransferJob]:
    """`make_job(script={...}, name=..., **spec)`: a FeatureExtraction job on its own data/output folders."""
    count = iter(range(1000))

    def make(script: dict[str, Any] | None = None, name: str | None = None, **spec: Any) -> TransferJob:
        n = next(count)
        data = tmp_path / f"data-{n}"
        data.mkdir()
        (data / "script.json").write_text(json.dumps(script or {"epochs": 3}))
        body: dict[str, Any] = {
            "model": {"base": "MobileNetV2", "weights": "imagenet", "imageSize": 96},  # no SpecWarning
            "data": {"source": {"hostPath": str(data)}},
            "output": {"location": {"hostPath": str(tmp_path / f"out-{n}")}},
            "resources": {"gpus": 0},
        }
        body.update(spec)
        metadata = {"name": name, "labels": {"suite": "sdk"}} if name else {"labels": {"suite": "sdk"}}
        return TransferJob.model_validate({"metadata": metadata, "spec": body})

    return make
