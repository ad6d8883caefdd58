"""Who owns an output location: the record a job leaves there, and what another job meets.

The tests of `ownership` itself touch only files (no TensorFlow: they run with the unit tests); the
ones marked `trainer` run the trainer's CLI twice or more into one folder, as the operator and the local
backend start it (`--job NAMESPACE/NAME --job-uid UID`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import Digits, make_spec
from transferjob.progress import Failed, Started
from transferjob_trainer import fs, ownership
from transferjob_trainer.errors import OutputInUseError
from transferjob_trainer.ownership import OWNER_FILE, Owner, check_owner, claim_output, read_owner

A = Owner(uid="uid-a", name="a", namespace="ml")
B = Owner(uid="uid-b", name="b", namespace="ml")


def record(out: Path) -> dict[str, Any]:
    return json.loads((out / OWNER_FILE).read_text())


def test_the_identity_comes_from_the_flags() -> None:
    assert Owner.from_flags("ml/a", "uid-a") == A
    assert Owner.from_flags("a", "uid-a") == Owner(uid="uid-a", name="a")
    assert Owner.from_flags(None, None) is None  # a trainer started by hand names no job


def test_the_first_job_claims_a_free_location_and_its_retries_keep_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert check_owner(str(out), A, "Exclusive") is None
    claim_output(str(out), A, "Exclusive")
    claimed = record(out)
    assert {k: v for k, v in claimed.items() if k != "claimedAt"} == {
        "apiVersion": "transferjob.io/v1alpha1",
        "kind": "TransferJob",
        "namespace": "ml",
        "name": "a",
        "uid": "uid-a",
    }
    claim_output(str(out), A, "Exclusive")  # a pod or operator restart: the same uid
    assert record(out) == claimed
    owner = read_owner(str(out))
    assert owner is not None and owner.uid == "uid-a" and owner.claimed_at == claimed["claimedAt"]


def test_another_job_fails_at_once_naming_the_location_and_its_owner(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_output(str(out), A, "Exclusive")
    since = record(out)["claimedAt"]
    for check in (check_owner, claim_output):
        with pytest.raises(OutputInUseError) as caught:
            check(str(out), B, "Exclusive")
        error = caught.value
        assert (error.reason, error.permanent) == ("OutputInUse", True)
        assert str(error).startswith(
            f"output location {out} is owned by TransferJob ml/a (uid uid-a, since {since}), whose model "
            "and checkpoints are there; choose another output location, or create this TransferJob again "
            "with spec.output.ownershipPolicy: Adopt"
        )
    assert record(out)["uid"] == "uid-a"
    with pytest.raises(OutputInUseError, match=r"this trainer run names no job: it has no --job-uid"):
        check_owner(str(out), None, "Exclusive")


def test_adopt_takes_the_location_over_and_keeps_the_previous_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    claim_output(str(out), A, "Exclusive")
    first = record(out)
    claim_output(str(out), B, "Adopt")
    adopted = record(out)
    assert adopted["uid"] == "uid-b" and adopted["name"] == "b"
    assert adopted["previousOwner"] == {k: first[k] for k in ("namespace", "name", "uid", "claimedAt")}
    assert "output.ownershipPolicy Adopt" in capsys.readouterr().err
    with pytest.raises(OutputInUseError, match="TransferJob ml/b"):
        check_owner(str(out), A, "Exclusive")  # the first job's retry now meets the new owner


def test_a_run_without_a_record_belongs_to_nobody_and_is_taken_over_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an older version (or a trainer started by hand) left: adopted, as the docs promise."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "state.json").write_text("{}")
    claim_output(str(out), B, "Exclusive")
    assert record(out)["uid"] == "uid-b"
    assert f"{out} holds files but no {OWNER_FILE}" in capsys.readouterr().err


def test_a_run_without_identity_claims_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_output(str(out), None, "Exclusive")
    assert not (out / OWNER_FILE).exists()
    claim_output(str(out), A, "Exclusive")
    claim_output(str(out), None, "Adopt")  # allowed, and the record stays the owner's
    assert record(out)["uid"] == "uid-a"


def test_an_unreadable_record_is_an_unknown_owner(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / OWNER_FILE).write_text("{not json")
    with pytest.raises(OutputInUseError, match=rf"an unknown job \(its {OWNER_FILE} cannot be read: "):
        check_owner(str(out), A, "Exclusive")
    claim_output(str(out), A, "Adopt")
    assert record(out)["uid"] == "uid-a" and "unreadable" in record(out)["previousOwner"]


def test_of_two_jobs_claiming_at_once_only_one_gets_the_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B read no record, then A's claim landed before B's: B's exclusive create fails, B is refused."""
    out = tmp_path / "out"
    create = fs.create_bytes

    def a_claims_first(uri: str, data: bytes) -> bool:
        assert create(uri, json.dumps(A.record("2026-01-01T00:00:00Z", None)).encode())
        return create(uri, data)

    monkeypatch.setattr(ownership.fs, "create_bytes", a_claims_first)
    with pytest.raises(OutputInUseError, match="TransferJob ml/a"):
        claim_output(str(out), B, "Exclusive")
    assert record(out)["uid"] == "uid-a"


def test_exclusive_create_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Volumes without hard links (some FUSE and SMB ones) get an exclusive create instead."""

    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "owner.json"
    assert fs.create_bytes(str(target), b"first")
    assert not fs.create_bytes(str(target), b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["owner.json"]  # no temporary file left behind


# ------------------------------------------------------------------------------ the trainer, end to end


def owned_run(run_trainer: Any, spec: dict[str, Any], job: Owner, *args: str) -> Any:
    return run_trainer(spec, "--job", f"{job.namespace}/{job.name}", "--job-uid", job.uid, *args)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small CNN untrained (saved at once): these tests are about files, not accuracy."""
    from transferjob.datasets import write_digits
    from transferjob_trainer.pretrain import pretrain

    root = tmp_path_factory.mktemp("ownership")
    write_digits(root / "d59", digits=range(5, 10), size=32, seed=0)
    pretrain(str(root / "d59"), str(root / "base.keras"), epochs=0)
    return root


def tiny_spec(root: Path, out: Path, **output: Any) -> dict[str, Any]:
    return {
        "model": {"base": str(root / "base.keras"), "imageSize": 32},
        "data": {"source": {"hostPath": str(root / "d59")}, "augmentation": {"enabled": False}},
        "training": {"epochs": 2, "batchSize": 64, "learningRate": 0.001},
        "output": {"location": {"hostPath": str(out)}, "savedModel": False, "tensorboard": False, **output},
    }


@pytest.mark.trainer
def test_a_second_job_into_one_folder_fails_and_the_first_ones_retry_resumes(
    tiny_base: Path, run_trainer: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = owned_run(run_trainer, tiny_spec(tiny_base, out), A)
    assert first.rc == 0, first.stderr[-3000:]
    model = (out / "model.keras").read_bytes()

    second = owned_run(run_trainer, tiny_spec(tiny_base, out), B)
    assert second.rc == 42, second.stderr[-3000:]
    failed = second.final
    assert isinstance(failed, Failed) and failed.reason == "OutputInUse" and failed.permanent
    assert f"output location {out} is owned by TransferJob ml/a (uid uid-a" in failed.message
    assert json.loads(second.termination or "{}")["reason"] == "OutputInUse"
    assert not second.of(Started), "it fails before the data is checked or a model built"
    assert (out / "model.keras").read_bytes() == model and record(out)["uid"] == "uid-a"

    retry = owned_run(run_trainer, tiny_spec(tiny_base, out), A)  # the same job again: it resumes
    assert retry.rc == 0, retry.stderr[-3000:]
    assert retry.started.initial_epoch == 2 and retry.epochs == []

    # Reading another job's model is not owning it: fine-tuning from A's model into a folder of its own.
    tuned = tiny_spec(tiny_base, tmp_path / "tuned")
    tuned.update(mode="FineTuning")
    tuned["model"]["fineTuneAt"] = "conv3"
    fine = owned_run(run_trainer, tuned, B, "--init-model", str(out / "model.keras"))
    assert fine.rc == 0, fine.stderr[-3000:]
    assert record(tmp_path / "tuned")["uid"] == "uid-b" and record(out)["uid"] == "uid-a"


@pytest.mark.trainer
def test_a_job_that_fails_on_its_data_leaves_no_claim(
    digits: Digits, run_trainer: Any, tmp_path: Path
) -> None:
    """The record is written once the data has passed its checks: fixing the data and creating the job
    again (a new uid) finds the location free. Its untrained base is named in the log on the way."""
    data = tmp_path / "data"
    shutil.copytree(digits.small_target, data)
    shutil.rmtree(data / "val")
    spec = make_spec(data, tmp_path / "out", model={"base": "MobileNetV2", "weights": "none"})
    run = owned_run(run_trainer, spec, A)
    assert run.rc == 42 and run.final.reason == "InvalidData"
    assert not (tmp_path / "out" / OWNER_FILE).exists()
    assert "[trainer] warning: spec.model.weights: none leaves MobileNetV2 untrained" in run.stderr


@pytest.mark.trainer
def test_a_job_that_adopts_continues_from_the_other_jobs_run(
    tiny_base: Path, run_trainer: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = owned_run(run_trainer, tiny_spec(tiny_base, out), A)
    assert first.rc == 0, first.stderr[-3000:]
    adopting = owned_run(run_trainer, tiny_spec(tiny_base, out, ownershipPolicy="Adopt"), B)
    assert adopting.rc == 0, adopting.stderr[-3000:]
    assert adopting.started.initial_epoch == 2, "the same settings and data: it resumes the finished run"
    assert record(out)["uid"] == "uid-b" and record(out)["previousOwner"]["uid"] == "uid-a"
    assert "output.ownershipPolicy Adopt" in adopting.stderr
