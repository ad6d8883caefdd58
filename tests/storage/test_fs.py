"""`transferjob_trainer.fs` against a real S3-compatible server: the operations the trainer uses, and
the errors a user sees for a missing object, wrong credentials and an endpoint nobody answers on."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferjob_testing.cluster.controlplane import free_port
from transferjob_testing.s3server import S3Server
from transferjob_trainer import fs
from transferjob_trainer.errors import OutputInUseError, StorageError
from transferjob_trainer.ownership import Owner, claim_output, read_owner


def test_files_round_trip(s3_env: S3Server, tmp_path: Path) -> None:
    base = s3_env.bucket("roundtrip") + "/run"
    fs.write_text(fs.join(base, "a.txt"), "hello")
    fs.write_bytes(fs.join(base, "sub/b.bin"), b"\x00\x01")
    assert fs.read_text(fs.join(base, "a.txt")) == "hello"
    assert fs.read_bytes(fs.join(base, "sub/b.bin"), limit=1) == b"\x00"
    assert fs.exists(fs.join(base, "a.txt")) and fs.exists(fs.join(base, "sub"))
    assert fs.isdir(fs.join(base, "sub")) and not fs.isdir(fs.join(base, "a.txt"))
    assert not fs.exists(fs.join(base, "nothing"))
    assert fs.listdir(base) == ["a.txt", "sub"]
    assert list(fs.walk_files(base)) == [fs.join(base, "a.txt"), fs.join(base, "sub/b.bin")]

    with fs.local_file_for_write(fs.join(base, "model.keras"), ".keras") as tmp:
        Path(tmp).write_bytes(b"model")
    with fs.local_copy_for_read(fs.join(base, "model.keras")) as local:
        assert local.endswith("model.keras") and Path(local).read_bytes() == b"model"

    tree = tmp_path / "tree"
    (tree / "variables").mkdir(parents=True)
    (tree / "saved_model.pb").write_bytes(b"pb")
    (tree / "variables" / "v.index").write_bytes(b"ix")
    fs.copy_tree(str(tree), fs.join(base, "saved_model"))
    assert list(fs.walk_files(fs.join(base, "saved_model"))) == [
        fs.join(base, "saved_model/saved_model.pb"),
        fs.join(base, "saved_model/variables/v.index"),
    ]

    fs.remove(fs.join(base, "sub"))
    fs.remove(fs.join(base, "a.txt"))
    fs.remove(fs.join(base, "missing"))  # missing is fine
    assert fs.listdir(base) == ["model.keras", "saved_model"]


def test_single_files_copy_up_and_down_whole(s3_env: S3Server, tmp_path: Path) -> None:
    """What the feature cache uses for its shards: a local file to a location and back, store or path."""
    local = tmp_path / "train-v0-00000.npy"
    local.write_bytes(b"records" * 1000)
    for target in (s3_env.bucket("shards") + "/run/features", str(tmp_path / "output" / "features")):
        fs.upload_file(str(local), fs.join(target, local.name))
        assert local.exists() and fs.listdir(target) == [local.name]
        back = tmp_path / "back" / local.name
        fs.download_file(fs.join(target, local.name), str(back))
        assert back.read_bytes() == local.read_bytes()
        assert [p.name for p in back.parent.iterdir()] == [local.name]  # no temporary file left
        back.unlink()
    with pytest.raises(StorageError, match="not found"):
        fs.download_file(s3_env.bucket("shards") + "/run/features/missing.npy", str(tmp_path / "m.npy"))
    assert not (tmp_path / "m.npy").exists()


def test_walk_files_keeps_the_local_order(s3_env: S3Server) -> None:
    """A folder's files before its sub-folders, as os.walk (and so the Keras loader) lists them."""
    base = s3_env.bucket("order")
    for key in ("c/z.png", "c/a/b.png", "c/b.png", "c-d/x.png"):
        fs.write_bytes(fs.join(base, key), b"x")
    assert [p.removeprefix(base + "/") for p in fs.walk_files(fs.join(base, "c"))] == [
        "c/b.png",
        "c/z.png",
        "c/a/b.png",
    ]


def test_stage_folder_copies_once_and_follows_changes(s3_env: S3Server, tmp_path: Path) -> None:
    base = s3_env.bucket("stage") + "/data"
    fs.write_bytes(fs.join(base, "train/cat/1.png"), b"one")
    fs.write_bytes(fs.join(base, "train/dog/2.png"), b"two")
    folder, fetched = fs.stage_folder(base, str(tmp_path))
    assert fetched == 2
    assert (Path(folder) / "train" / "cat" / "1.png").read_bytes() == b"one"

    assert fs.stage_folder(base, str(tmp_path)) == (folder, 0)  # unchanged objects are not fetched again

    fs.write_bytes(fs.join(base, "train/cat/1.png"), b"ONE")
    fs.remove(fs.join(base, "train/dog/2.png"))
    assert fs.stage_folder(base, str(tmp_path)) == (folder, 1)
    assert (Path(folder) / "train" / "cat" / "1.png").read_bytes() == b"ONE"
    assert not (Path(folder) / "train" / "dog" / "2.png").exists()


def test_an_output_in_a_bucket_is_owned_by_one_job(s3_env: S3Server) -> None:
    """`owner.json` in an object store: created only where there is none (a conditional put), so of two
    jobs claiming one prefix only one gets it; the same checks as on a volume."""
    out = s3_env.bucket("owned") + "/run"
    assert fs.create_bytes(fs.join(out, "first.txt"), b"one")
    assert not fs.create_bytes(fs.join(out, "first.txt"), b"two")
    assert fs.read_bytes(fs.join(out, "first.txt")) == b"one"

    first, second = Owner(uid="uid-a", name="a", namespace="ml"), Owner(uid="uid-b", name="b", namespace="ml")
    claim_output(out, first, "Exclusive")
    claim_output(out, first, "Exclusive")  # a retry
    with pytest.raises(
        OutputInUseError, match=r"^output location s3://owned/run is owned by TransferJob ml/a"
    ):
        claim_output(out, second, "Exclusive")
    claim_output(out, second, "Adopt")
    owner = read_owner(out)
    assert owner is not None and owner.uid == "uid-b"


def test_missing_object_and_bucket_are_not_found(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.bucket("present")
    with pytest.raises(StorageError, match=r"^s3://present/no/such.keras: not found \(NoSuchKey\)$"):
        fs.read_bytes(f"{bucket}/no/such.keras")
    with pytest.raises(StorageError, match=r"^s3://absent-bucket/x: not found \(NoSuchBucket\)$"):
        fs.read_bytes("s3://absent-bucket/x")
    with pytest.raises(StorageError, match=r"^s3://present/empty: not found"):
        fs.stage_folder(f"{bucket}/empty", str(tmp_path))


def test_wrong_credentials_are_access_denied(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = s3_env.bucket("guarded") + "/file.txt"
    fs.write_text(uri, "secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(
        StorageError, match=r"^s3://guarded/file.txt: access denied \(SignatureDoesNotMatch\)$"
    ):
        fs.read_text(uri)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(StorageError, match=r"^s3://guarded/file.txt: access denied"):
        fs.write_text(uri, "overwritten")
    with pytest.raises(StorageError, match=r"access denied") as error:
        fs.exists(uri)
    assert error.value.permanent and error.value.reason == "StorageError"


def test_unreachable_endpoint_is_named(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(StorageError, match=rf"^s3://b/k: endpoint {endpoint} unreachable$"):
        fs.read_bytes("s3://b/k")


def test_https_reads_single_files_only_from_a_server(tmp_path: Path) -> None:
    """https:// is read with the same client: an unreachable host is named like an S3 endpoint."""
    port = free_port()
    with pytest.raises(StorageError, match=rf"^https://127.0.0.1:{port}/m.keras: endpoint .* unreachable$"):
        fs.read_bytes(f"https://127.0.0.1:{port}/m.keras")
