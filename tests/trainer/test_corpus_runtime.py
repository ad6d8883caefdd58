"""The adversarial corpus at run time (tests/corpus/runtime.yaml): damaged data, trained on by the CLI.

Every failure must be permanent (exit code 42, EXIT_PERMANENT: the operator's podFailurePolicy then
fails the Job instead of retrying), carry the expected reason and name the culprit; the quirks that must
not stop a job must not. See tests/corpus/README.md.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.admission import load_corpus, merged
from transferjob.constants import EXIT_PERMANENT

from .conftest import Digits, SourceModels, make_spec

pytestmark = pytest.mark.trainer

CASES = load_corpus("runtime.yaml")


def _first(root: Path, pattern: str) -> Path:
    matches = sorted(root.glob(pattern))
    assert matches, f"{pattern} matches nothing under {root}"
    return matches[0]


def damage(root: Path, step: dict[str, Any]) -> None:
    """Apply one damage step (see runtime.yaml's header) to the data folder `root`."""
    from PIL import Image

    ((op, arg),) = step.items()
    if op == "rm":
        targets = [root] if arg == "." else sorted(root.glob(arg))
        assert targets, f"{arg} matches nothing under {root}"
        for target in targets:
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    elif op == "write":
        path = root / arg["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(arg["text"])
    elif op == "truncate":
        victim = _first(root, arg["path"])
        victim.write_bytes(victim.read_bytes()[: arg["keep"]])
    elif op == "convert":
        with Image.open(_first(root, arg["from"])) as image:
            out = image.convert(arg.get("mode", "RGB"))
            if "size" in arg:
                out = out.resize((arg["size"], arg["size"]))
            out.save(root / arg["to"], format=arg.get("format", "PNG"))
    elif op == "mkdir":
        (root / arg).mkdir(parents=True)
    elif op == "move":
        (root / arg["from"]).rename(root / arg["to"])
    else:
        raise AssertionError(f"unknown damage step {op}")


def _expand(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _expand(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, names) for v in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_runtime_case(
    case: dict[str, Any], digits: Digits, source_models: SourceModels, run_trainer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(digits.small_target, data)
    names = {"data": str(data), "source": str(source_models.pretrained)}
    for step in case.get("damage", []):
        damage(data, step)
    base = make_spec(
        data,
        tmp_path / "out",
        model={"base": str(source_models.pretrained), "head": {"dropout": 0.0}},
        training={"epochs": 1, "learningRate": 0.001},
    )
    spec = merged(base, _expand(copy.deepcopy(case.get("spec", {})), names))
    if spec["mode"] == "FineTuning" and "fineTuneAt" not in spec["model"]:
        spec["model"]["fineTuneAt"] = "conv3"
    run = run_trainer(spec, timeout=300)
    context = f"{case.get('why', '')}\nrc={run.rc}\nstderr: {run.stderr[-2000:]}"
    if case["expect"] == "succeed":
        assert run.rc == 0, context
        assert run.started.skipped_images == case.get("skipped_images", 0), context
        assert (
            run.finished.test.per_class
            and sum(c.support for c in run.finished.test.per_class) == case["test_images"]
        ), context
        return
    assert case["expect"] == "fail", case
    failed = run.final
    assert run.rc == EXIT_PERMANENT, f"{failed}\n{context}"
    assert failed.reason == case["reason"], f"{failed}\n{context}"
    for words in _expand(case["says"], names):
        assert words in failed.message, f"{words!r} not in {failed.message!r}\n{context}"
    assert json.loads(run.termination or "{}")["reason"] == case["reason"]
    assert "Traceback" not in run.stderr, context
