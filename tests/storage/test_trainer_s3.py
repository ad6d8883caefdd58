"""The trainer (its real CLI, in a subprocess) with data, base model and output in an S3-compatible store.

The failures run no TensorFlow (they stop before it is imported) and take a second or two each; the
training round trip is marked `trainer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import Digits, SourceModels, TrainerRun, make_spec
from transferjob.constants import EXIT_PERMANENT
from transferjob.progress import Failed, PhaseChanged
from transferjob_testing.cluster.controlplane import free_port
from transferjob_testing.s3server import S3Server
from transferjob_trainer import fs

#: A base whose checks pass without weights: these runs fail before any model is built.
MOBILENET = {"base": "MobileNetV2", "weights": "none"}


def upload(folder: Path, uri: str) -> None:
    """A local folder into the store, as a platform team's data set would lie there."""
    fs.put_tree(str(folder), uri)


def s3_spec(data_uri: str, output_uri: str, s3: S3Server, **changes: Any) -> dict[str, Any]:
    spec = make_spec(Path("/unused"), Path("/unused"), **changes)
    spec["data"]["source"] = {"uri": data_uri}
    spec["output"]["location"] = {"uri": output_uri}
    spec["storage"] = {"endpointURL": s3.endpoint, "region": s3.region}
    return spec


def assert_storage_failure(run: TrainerRun, says: str) -> None:
    assert run.rc == EXIT_PERMANENT, run.stderr[-3000:]
    final = run.final
    assert isinstance(final, Failed) and final.permanent and final.reason == "StorageError", final
    assert final.message.startswith(says), final.message


@pytest.fixture
def digits_in_s3(s3_env: S3Server, digits: Digits) -> str:
    uri = s3_env.bucket("datasets") + "/digits-small"
    if not fs.exists(fs.join(uri, "train")):
        upload(digits.small_target, uri)
    return uri


def test_missing_data_is_not_found(s3_env: S3Server, run_trainer) -> None:
    bucket = s3_env.bucket("empty-data")
    run = run_trainer(s3_spec(f"{bucket}/flowers", f"{bucket}/out", s3_env, model=MOBILENET))
    assert_storage_failure(run, "s3://empty-data/flowers: not found")


def test_wrong_credentials_are_access_denied(
    s3_env: S3Server, digits_in_s3: str, run_trainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    out = s3_env.bucket("denied") + "/out"
    run = run_trainer(s3_spec(digits_in_s3, out, s3_env, model=MOBILENET))
    assert_storage_failure(run, "s3://denied/out/checkpoints: access denied")


def test_unreachable_endpoint_is_named(s3_env: S3Server, run_trainer) -> None:
    spec = s3_spec("s3://data/digits", "s3://out/run", s3_env, model=MOBILENET)
    endpoint = f"http://127.0.0.1:{free_port()}"
    spec["storage"]["endpointURL"] = endpoint
    run = run_trainer(spec)
    assert_storage_failure(run, f"s3://out/run/checkpoints: endpoint {endpoint} unreachable")


def test_missing_model_to_fine_tune_is_not_found(s3_env: S3Server, digits_in_s3: str, run_trainer) -> None:
    bucket = s3_env.bucket("models")
    spec = s3_spec(
        digits_in_s3,
        f"{bucket}/ft",
        s3_env,
        mode="FineTuning",
        model={
            "base": "MobileNetV2",
            "weights": "none",
            "fromModel": f"{bucket}/gone/model.keras",
            "fineTuneAt": 100,
        },
    )
    run = run_trainer(spec)
    assert_storage_failure(run, "s3://models/gone/model.keras: not found")


@pytest.mark.trainer
def test_train_from_and_into_the_store_then_resume_and_fine_tune(
    s3_env: S3Server,
    digits_in_s3: str,
    source_models: SourceModels,
    run_trainer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data, base model and every output in the bucket; a rerun resumes from the checkpoints there, in a
    fresh scratch folder (as a new pod would): the feature shards come back from the bucket."""
    bucket = s3_env.bucket("runs")
    base = f"{bucket}/source/source.keras"
    fs.write_bytes(base, source_models.pretrained.read_bytes())
    fe_out = f"{bucket}/fe"
    spec = s3_spec(
        digits_in_s3,
        fe_out,
        s3_env,
        model={"base": base, "head": {"dropout": 0.0}},
        training={"epochs": 2, "learningRate": 0.01},
        output={"savedModel": True},
    )
    fe = run_trainer(spec)
    assert fe.rc == 0, fe.stderr[-3000:]
    artifacts = fe.finished.model
    assert artifacts.uri == f"{fe_out}/model.keras"
    assert artifacts.saved_model_uri == f"{fe_out}/saved_model"
    stored = set(fs.listdir(fe_out))
    assert {"model.keras", "saved_model", "metrics.json", "tensorboard", "checkpoints"} <= stored, stored
    assert fs.exists(f"{fe_out}/saved_model/1/saved_model.pb")
    assert any("tfevents" in p for p in fs.walk_files(f"{fe_out}/tensorboard/train"))

    shards = set(fs.listdir(f"{fe_out}/checkpoints/features"))
    assert {"manifest.json", "train-v0-00000.npy", "val-00000.npy", "test-00000.npy"} <= shards, shards

    scratch = tmp_path / "new-pod"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    again = run_trainer(spec)
    assert again.rc == 0, again.stderr[-3000:]
    assert again.started.initial_epoch == 2, "the rerun must resume from the checkpoints in the bucket"
    assert again.epochs == []
    assert "features" not in [e.phase for e in again.of(PhaseChanged)]
    assert [p.name for p in scratch.glob("transferjob-features/*/*.npy")] == ["test-00000.npy"]
    assert again.finished.test.accuracy == fe.finished.test.accuracy

    ft = run_trainer(
        s3_spec(
            digits_in_s3,
            f"{bucket}/ft",
            s3_env,
            mode="FineTuning",
            model={"base": base, "fromModel": artifacts.uri, "fineTuneAt": "conv3"},
            training={"epochs": 1, "learningRate": 1e-4},
        )
    )
    assert ft.rc == 0, ft.stderr[-3000:]
    assert ft.epochs == [1]
    assert fs.exists(f"{bucket}/ft/model.keras")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_env.endpoint
