"""`tj predict` without TensorFlow: which model folder and which image files it takes.

Running the model is tested on a real exported model in tests/trainer/test_serving.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from transferjob.errors import ModelNotServableError, TransferJobError
from transferjob.models import TransferJob
from transferjob.predict import image_files, local_model_folder, version_folder


def succeeded(output: dict[str, Any], saved_model_uri: str) -> TransferJob:
    return TransferJob.model_validate(
        {
            "metadata": {"name": "fe"},
            "spec": {
                "model": {"base": "MobileNetV2"},
                "data": {"source": {"hostPath": "/data"}},
                "output": {"location": output},
            },
            "status": {"phase": "Succeeded", "model": {"uri": "m.keras", "savedModelUri": saved_model_uri}},
        }
    )


def test_a_job_on_this_machine_is_found_where_its_output_lies() -> None:
    # A local job reports the path itself; a pod on this node reports its mount, /output/<leaf>.
    assert local_model_folder(succeeded({"hostPath": "/srv/fe"}, "/srv/fe/saved_model")) == Path(
        "/srv/fe/saved_model"
    )
    assert local_model_folder(succeeded({"hostPath": "/srv/fe"}, "/output/fe/saved_model")) == Path(
        "/srv/fe/saved_model"
    )
    assert local_model_folder(succeeded({"uri": "file:///srv/fe"}, "/srv/fe/saved_model")) == Path(
        "/srv/fe/saved_model"
    )
    with pytest.raises(ModelNotServableError, match="s3://models/fe/saved_model, not to this machine: copy"):
        local_model_folder(succeeded({"uri": "s3://models/fe"}, "s3://models/fe/saved_model"))
    with pytest.raises(ModelNotServableError, match="pvc://models/saved_model, not to this machine"):
        local_model_folder(succeeded({"pvc": {"claimName": "models"}}, "/output/saved_model"))


def test_the_highest_version_is_loaded_as_tensorflow_serving_does(tmp_path: Path) -> None:
    for version in ("1", "2", "10", "backup"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "saved_model.pb").write_bytes(b"")
    (tmp_path / "11").mkdir()  # a version being written: no saved_model.pb yet
    assert version_folder(tmp_path) == tmp_path / "10"
    assert version_folder(tmp_path / "2") == tmp_path / "2"
    with pytest.raises(ModelNotServableError, match="holds no SavedModel"):
        version_folder(tmp_path / "11")


def test_folders_give_their_image_files_sorted(tmp_path: Path) -> None:
    for name in ("b/2.PNG", "b/1.jpg", "a.webp", "notes.txt", "c/deep/3.jpeg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    single = tmp_path / "notes.txt"
    assert image_files([str(single), str(tmp_path)]) == [
        single,
        tmp_path / "a.webp",
        tmp_path / "b/1.jpg",
        tmp_path / "b/2.PNG",
        tmp_path / "c/deep/3.jpeg",
    ]
    with pytest.raises(TransferJobError, match="no such file or folder"):
        image_files([str(tmp_path / "absent.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransferJobError, match="holds no image files"):
        image_files([str(tmp_path / "empty")])
