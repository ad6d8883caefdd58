"""The numbered examples run as written (the source CNN is really pretrained; the TransferJobs run the
scripted trainer, so this takes seconds, not minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(example: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / example / "example.py"), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_local_examples_chain(tj_home: Path, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")  # 01 writes the digits dataset
    first = run("01-local-feature-extraction", tmp_path)
    assert first.returncode == 0, first.stderr
    assert "epoch 5/5" in first.stdout and (tmp_path / "features-curves.png").exists()
    second = run("02-local-fine-tuning", tmp_path)
    assert second.returncode == 0, second.stderr
    assert "fine-tuning 0.9500" in second.stdout and (tmp_path / "finetune-curves.png").exists()
