"""Fine-tuning across two worker processes (MultiWorkerMirroredStrategy over loopback), as two pods of
an Indexed Job run it, against the same job on one worker.

Measured through `test_two_workers_train_as_one` (digits 5-9 wide-test split, 3 epochs from the
pretrained source, conv3 on, learning rate 1e-3, global batch 64: one worker with batches of 64, two
with 32 each): see the assertion's message in the log for the figures of a run.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import Digits, SourceModels, make_spec, parse_run, trainer_command, trainer_env
from transferjob.progress import EpochEnded
from transferjob_testing.cluster.controlplane import free_port
from transferjob_trainer.errors import InvalidDataError
from transferjob_trainer.layout import Layout, Split
from transferjob_trainer.workers import ENV_HOSTS, ENV_INDEX, Worker

#: Two workers must reach the single worker's test accuracy within this (314 test images: 6 images).
TOLERANCE = 0.02


def test_a_group_is_read_from_the_environment_and_one_worker_is_no_group() -> None:
    assert Worker.from_env({}) is None
    assert Worker.from_env({ENV_HOSTS: "a-0.s:2222", ENV_INDEX: "0"}) is None
    worker = Worker.from_env({ENV_HOSTS: "a-0.s:2222,a-1.s:2222", ENV_INDEX: "1"})
    assert worker == Worker(1, ("a-0.s:2222", "a-1.s:2222"))
    assert not worker.chief
    assert json.loads(worker.tf_config()) == {
        "cluster": {"worker": ["a-0.s:2222", "a-1.s:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX='2'"):
        Worker.from_env({ENV_HOSTS: "a,b", ENV_INDEX: "2"})
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX=''"):
        Worker.from_env({ENV_HOSTS: "a,b"})


def test_shards_split_the_files_and_steps_agree_across_workers() -> None:
    split = Split("train", "/d/train", tuple(f"f{i}" for i in range(7)), (0, 0, 0, 1, 1, 1, 1))
    hosts = ("a", "b", "c")
    shards = [Worker(i, hosts).shard(split) for i in range(3)]
    assert sorted(f for s in shards for f in s.files) == sorted(split.files)
    assert [len(s) for s in shards] == [3, 2, 2]
    assert shards[1].files == ("f1", "f4") and shards[1].labels == (0, 1)
    # 7 images, batches of 2, 3 workers: 2 steps each (6 full batches of the group cover them once).
    assert {Worker(i, hosts).steps(7, 2) for i in range(3)} == {2}
    assert Worker(0, hosts).steps(1, 64) == 1


def test_only_the_chief_holds_the_test_split_and_a_shard_may_lack_a_class() -> None:
    """The other workers never read a test image; skipping a bad file fails only a class it empties."""
    train = Split("train", "/d/train", ("a0", "a1", "a2", "a3", "b0", "b1"), (0, 0, 0, 0, 1, 1))
    val = Split("val", "/d/val", ("va", "vb"), (0, 1))
    test = Split("test", "/d/test", ("ta", "tb"), (0, 1))
    layout = Layout("/d", ("a", "b"), train, val, test)
    hosts = ("h0", "h1")
    chief, other = (Worker(i, hosts).shard_layout(layout) for i in range(2))
    assert chief.test == test and len(other.test) == 0
    assert other.val.files == ("vb",)  # one validation image: this shard has no image of class a
    # A bad training file is skipped; the shard's empty test split and class-less val are no error.
    assert other.without([("a1", "bad")]).train.files == ("a3", "b1")
    with pytest.raises(InvalidDataError, match="/d/val/b has no decodable image left"):
        other.without([("vb", "bad")])


def run_group(spec: dict[str, Any], tmp_path: Path, workers: int) -> list[Any]:
    """Run `workers` trainer processes on one spec, as the pods of one group; their parsed runs."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    hosts = ",".join(f"127.0.0.1:{free_port()}" for _ in range(workers))
    procs = []
    for index in range(workers):
        env = {**trainer_env(), ENV_HOSTS: hosts, ENV_INDEX: str(index)} if workers > 1 else trainer_env()
        log = tmp_path / f"termination-{index}.log"
        command = trainer_command(spec_file, termination_log=log)
        procs.append(
            (
                subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                log,
            )
        )
    runs = []
    for proc, log in procs:
        out, err = proc.communicate(timeout=900)
        runs.append(parse_run(proc.returncode, out, err, log))
    return runs


def test_two_workers_train_as_one(digits: Digits, source_models: SourceModels, tmp_path: Path) -> None:
    """Each worker reads its own half, both report the same epochs and metrics, only the chief writes,
    and the test accuracy matches one worker with the same global batch."""

    def spec(out: str, batch: int) -> dict[str, Any]:
        return make_spec(
            digits.wide_test,
            tmp_path / out,
            mode="FineTuning",
            model={"base": str(source_models.pretrained), "fineTuneAt": "conv3", "head": {"dropout": 0.0}},
            training={"epochs": 3, "learningRate": 1e-3, "batchSize": batch},
        )

    for folder in ("one-run", "two-run"):
        (tmp_path / folder).mkdir()
    (single,) = run_group(spec("one", 64), tmp_path / "one-run", 1)
    assert single.rc == 0, single.stderr[-3000:]
    chief, other = run_group(spec("two", 32), tmp_path / "two-run", 2)
    assert chief.rc == 0, chief.stderr[-3000:]
    assert other.rc == 0, other.stderr[-3000:]

    # Each read its own shard of the 448 training and 134 validation images; only the chief the test set.
    assert re.search(
        r"worker 0 of 2 .*reads 224 of 448 training and 67 of 134 validation images, and the 314 test",
        chief.stderr,
    )
    assert re.search(
        r"worker 1 of 2 .*reads 224 of 448 training and 67 of 134 validation images$", other.stderr, re.M
    )
    assert chief.started.train_images == 224 and other.started.train_images == 224

    # The same epochs, the same all-reduced metrics on both (the weights are equal).
    assert chief.epochs == other.epochs == [1, 2, 3]
    for a, b in zip(chief.of(EpochEnded), other.of(EpochEnded), strict=True):
        assert a.metrics.val_loss == b.metrics.val_loss and a.metrics.accuracy == b.metrics.accuracy

    # The chief tests and exports; the other writes nothing and reports no result.
    assert chief.finished.model.uri and (tmp_path / "two" / "model.keras").exists()
    assert other.termination is None
    assert not [e for e in other.events if getattr(e, "event", "") == "finished"]

    one, two = single.finished.test.accuracy, chief.finished.test.accuracy
    print(f"test accuracy: 1 worker (batch 64) {one:.4f}, 2 workers (32 each) {two:.4f}")
    assert abs(one - two) <= TOLERANCE, (one, two)


def test_two_workers_extract_features_and_train_the_head_as_one(
    digits: Digits, source_models: SourceModels, tmp_path: Path
) -> None:
    """Feature extraction on two workers: each runs the base over its own shard only (the chief also over
    the test set), they train the head on their features with its gradients summed, the chief alone
    writes (its shard's features beside its checkpoints, the other's in its scratch), and the test
    accuracy matches one worker with the same global batch."""

    def spec(out: str, batch: int) -> dict[str, Any]:
        return make_spec(
            digits.wide_test,
            tmp_path / out,
            model={"base": str(source_models.pretrained), "head": {"dropout": 0.0}},
            training={
                "epochs": 20,
                "learningRate": 1e-2,
                "batchSize": batch,
                "earlyStopping": {"enabled": False},
            },
        )

    for folder in ("one-run", "two-run"):
        (tmp_path / folder).mkdir()
    (single,) = run_group(spec("one", 64), tmp_path / "one-run", 1)
    assert single.rc == 0, single.stderr[-3000:]
    chief, other = run_group(spec("two", 32), tmp_path / "two-run", 2)
    assert other.rc == 0, other.stderr[-3000:]
    assert chief.rc == 0, chief.stderr[-3000:]

    # The other worker checks and runs the base over its 224 + 67 images only, never a test image.
    assert re.search(
        r"worker 1 of 2 .*reads 224 of 448 training and 67 of 134 validation images$", other.stderr, re.M
    )
    assert other.started.test_images == 0 and chief.started.test_images == 314
    features = [e for e in other.events if getattr(e, "phase", "") == "features"]
    assert features, other.stderr[-3000:]

    assert chief.epochs == other.epochs == single.epochs == list(range(1, 21))
    for a, b in zip(chief.of(EpochEnded), other.of(EpochEnded), strict=True):
        assert a.metrics.val_loss == b.metrics.val_loss and a.metrics.accuracy == b.metrics.accuracy

    # Only the chief wrote to the output: its shard's features, the checkpoints, the model.
    cached = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "features").glob("*.npy"))
    assert cached == ["test-00000.npy", "train-v0-00000.npy", "val-00000.npy"], cached
    assert chief.finished.model.uri and (tmp_path / "two" / "model.keras").exists()
    assert other.termination is None

    one, two = single.finished.test.accuracy, chief.finished.test.accuracy
    print(f"feature extraction test accuracy: 1 worker (batch 64) {one:.4f}, 2 workers (32 each) {two:.4f}")
    assert abs(one - two) <= TOLERANCE, (one, two)
