"""The exported SavedModel as servers load it, and `tj predict` on it: one real trainer run, shared.

The run is feature extraction on the digits from the small CNN pretrained on digits 0-4 (the session's
`source_models`), so the model's answer depends on the image: with a network whose answer did not
(MobileNetV2 with random weights gives every image the same probabilities), a decoding or resizing
that differed from training's would go unnoticed. The base's own preprocessing (its Rescaling) is a
layer of the exported model, as `preprocess_input` is for `keras.applications` bases. TensorFlow
Serving's layout rule is checked the way a server applies it: `tf.saved_model.load` of the version
folder `<output>/saved_model/1`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from transferjob.cli import EXIT_FAILED, EXIT_OK, main
from transferjob.progress import Finished

from .conftest import (
    IMAGE_SIZE,
    Digits,
    SourceModels,
    make_spec,
    run_spec_file,
    served_probabilities,
)

pytestmark = pytest.mark.trainer


@dataclass(frozen=True)
class Exported:
    output: Path
    finished: Finished
    classes: list[str]


@pytest.fixture(scope="module")
def exported(
    digits: Digits, source_models: SourceModels, tmp_path_factory: pytest.TempPathFactory
) -> Exported:
    """One short run with the SavedModel on (the test default leaves it off)."""
    root = tmp_path_factory.mktemp("serving")
    spec = make_spec(
        digits.small_target,
        root / "out",
        model={"base": str(source_models.pretrained), "head": {"dropout": 0.0}},
        training={"epochs": 3, "learningRate": 0.01},
        output={"savedModel": True, "tensorboard": False},
    )
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    run = run_spec_file(spec_file, termination_log=root / "termination.log")
    assert run.rc == 0, run.stderr[-3000:]
    return Exported(root / "out", run.finished, run.started.classes)


def encoded(path: Path, fmt: str, mode: str = "RGB", size: tuple[int, int] | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as picture:
        changed = picture.convert(mode)
        (changed.resize(size, Image.Resampling.BILINEAR) if size else changed).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_files(digits: Digits) -> dict[str, bytes]:
    """Test digits as users send them: grey, with alpha, JPEG, larger and not square, as written."""
    first = {
        digit: sorted((digits.small_target / "test" / str(digit)).iterdir())[0] for digit in range(5, 10)
    }
    return {
        "5.png": first[5].read_bytes(),
        "6-grey.png": encoded(first[6], "PNG", "L"),
        "7-alpha.png": encoded(first[7], "PNG", "RGBA"),
        "8.jpg": encoded(first[8], "JPEG"),
        "9-large.png": encoded(first[9], "PNG", size=(45, 38)),
    }


def test_the_version_folder_serves_image_bytes_and_floats_alike(
    exported: Exported, image_files: dict[str, bytes]
) -> None:
    import keras
    import tensorflow as tf

    from transferjob_trainer.pipeline import decode_resize

    base = exported.output / "saved_model"
    assert exported.finished.model.saved_model_uri == str(base)
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    signatures = tf.saved_model.load(str(base / "1")).signatures
    assert sorted(signatures) == ["predict_images", "serving_default"]

    data = list(image_files.values())
    from_bytes = signatures["serving_default"](image_bytes=tf.constant(data))
    # The float input is what training fed the model: the training pipeline's decoding and resizing.
    floats = np.stack([decode_resize(tf.constant(d), IMAGE_SIZE).numpy() for d in data]).astype(np.float32)
    assert floats.shape == (len(data), IMAGE_SIZE, IMAGE_SIZE, 3)
    from_floats = signatures["predict_images"](transferjob_image=tf.constant(floats))

    served = served_probabilities(from_bytes, exported.classes)
    np.testing.assert_allclose(served, served_probabilities(from_floats, exported.classes), atol=1e-6)
    trained = keras.models.load_model(exported.output / "model.keras").predict(floats, verbose=0)
    np.testing.assert_allclose(served, trained, atol=1e-5)
    # The answers depend on the image: a preprocessing that differed would show.
    assert len(set(np.argmax(served, axis=-1))) >= 3, served
    metrics = json.loads((exported.output / "metrics.json").read_text())
    assert metrics["classes"] == exported.classes == ["5", "6", "7", "8", "9"]


def tj(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_tj_predict_prints_the_top_classes_and_names_a_broken_file(
    exported: Exported, image_files: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tensorflow as tf

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in image_files.items():
        (folder / name).write_bytes(data)
    serving = tf.saved_model.load(str(exported.output / "saved_model" / "1")).signatures["serving_default"]
    files = sorted(folder.iterdir())
    expected = serving(image_bytes=tf.constant([f.read_bytes() for f in files]))

    code, out = tj("predict", str(exported.output / "saved_model"), str(folder), "--top", "2", "-o", "json")
    assert code == EXIT_OK, capsys.readouterr().err
    rows = json.loads(out)
    assert [row["image"] for row in rows] == [str(f) for f in files]
    assert [row["classes"] for row in rows] == expected["classes"].numpy()[:, :2].astype(str).tolist()
    np.testing.assert_allclose([row["scores"] for row in rows], expected["scores"].numpy()[:, :2], atol=1e-6)

    (folder / "broken.png").write_bytes(image_files["5.png"][:40])
    code, out = tj(
        "predict", f"{exported.output}/saved_model/1", str(folder / "5.png"), str(folder / "broken.png")
    )
    assert code == EXIT_FAILED
    (line,) = out.splitlines()
    top = rows[[row["image"] for row in rows].index(str(folder / "5.png"))]
    assert line.split()[:3] == [str(folder / "5.png"), top["classes"][0], f"{top['scores'][0]:.4f}"]
    assert len(line.split()) == 1 + 2 * 3  # the default --top 3
    error = capsys.readouterr().err
    assert error.startswith(f"tj: error: {folder / 'broken.png'}: ") and error.count("\n") == 1, error


def test_a_saved_model_without_the_image_files_signature_is_named(tmp_path: Path) -> None:
    """Models exported before the signature took image files (its input was `transferjob_image`)."""
    import tensorflow as tf

    from transferjob.errors import ModelNotServableError
    from transferjob.predict import load_serving_signature

    older = tf.function(lambda images: images * 2.0, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    tf.saved_model.save(
        tf.Module(), str(tmp_path / "1"), signatures={"serving_default": older.get_concrete_function()}
    )
    with pytest.raises(ModelNotServableError, match=r"does not take image files .* run the job again"):
        load_serving_signature(tmp_path)
