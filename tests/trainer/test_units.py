"""Fast tests of the trainer's pure pieces and of the digits writer."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from transferjob.bases import BASES
from transferjob.datasets import main as datasets_main
from transferjob.datasets import parse_digit_range, split_counts, write_digits
from transferjob.models import EarlyStoppingSpec, parse_spec
from transferjob_trainer import errors
from transferjob_trainer.errors import InvalidDataError, InvalidSpecError
from transferjob_trainer.layout import image_problem, scan_layout
from transferjob_trainer.metrics import classification_metrics, confusion_matrix, cross_entropy, misclassified
from transferjob_trainer.paths import resolve_paths
from transferjob_trainer.report import write_termination_log
from transferjob_trainer.run import spec_from_document
from transferjob_trainer.stopping import StopState, kept_epoch, step

if TYPE_CHECKING:
    import keras

pytestmark = pytest.mark.trainer


def spec_dict(**overrides: object) -> dict:
    spec: dict = {
        "model": {"base": "MobileNetV2", "weights": "none", "imageSize": 32},
        "data": {"source": {"hostPath": "/data"}},
        "output": {"location": {"uri": "file:///out"}},
    }
    spec.update(overrides)
    return spec


# ------------------------------------------------------------------------------------------ datasets


@pytest.mark.parametrize(
    ("text", "digits"),
    [("0-4", [0, 1, 2, 3, 4]), ("7", [7]), ("5,7,9", [5, 7, 9]), ("0-2,8,1", [0, 1, 2, 8])],
)
def test_parse_digit_range(text: str, digits: list[int]) -> None:
    assert parse_digit_range(text) == digits


@pytest.mark.parametrize("text", ["", "4-0", "0-10", "a", "1,,2", "-3"])
def test_parse_digit_range_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_digit_range(text)


def test_split_counts_keep_every_image_and_every_split() -> None:
    assert split_counts(180, (0.7, 0.15, 0.15)) == (126, 27, 27)
    assert sum(split_counts(181, (0.7, 0.15, 0.15))) == 181
    assert min(split_counts(3, (0.98, 0.01, 0.01))) == 1


def test_write_digits_is_stratified_and_seeded(tmp_path: Path) -> None:
    first = write_digits(tmp_path / "a", digits=[3, 8], size=32, seed=5)
    again = write_digits(tmp_path / "b", digits=[3, 8], size=32, seed=5)
    assert first.classes == ["3", "8"]
    assert first.counts == again.counts
    assert sorted(p.name for p in (tmp_path / "a" / "val" / "3").iterdir()) == sorted(
        p.name for p in (tmp_path / "b" / "val" / "3").iterdir()
    )
    for split in ("train", "val", "test"):
        for digit in ("3", "8"):
            files = list((tmp_path / "a" / split / digit).glob("*.png"))
            assert len(files) == first.counts[split][digit] > 0
    from PIL import Image

    with Image.open(next((tmp_path / "a" / "train" / "3").iterdir())) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    names = {p.name for split in ("train", "val", "test") for p in (tmp_path / "a" / split / "3").iterdir()}
    assert (
        len(names) == first.total("train") // 2 + first.total("val") // 2 + first.total("test") // 2 or names
    )


def test_datasets_main_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert datasets_main(["digits", str(tmp_path / "d"), "--digits", "0-1", "--size", "16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["0", "1"]
    assert summary["totals"]["train"] + summary["totals"]["val"] + summary["totals"]["test"] == 360


# ------------------------------------------------------------------------------------------ stopping


def run_stopping(values: list[float], spec: EarlyStoppingSpec) -> tuple[StopState, int]:
    state = StopState()
    epoch = 0
    for epoch, value in enumerate(values, start=1):
        state, _ = step(state, epoch, value, spec)
        if state.stopped:
            break
    return state, epoch


def test_early_stopping_follows_keras_rules() -> None:
    spec = EarlyStoppingSpec(patience=2, min_delta=0.01)
    state, last = run_stopping([1.0, 0.8, 0.795, 0.79, 0.5], spec)
    assert state.stopped and last == 4  # 0.795 and 0.79 are within min_delta of 0.8
    assert state.best_epoch == 2 and state.best == 0.8
    assert kept_epoch(state, last, spec) == 2
    assert kept_epoch(state, last, EarlyStoppingSpec(restore_best_weights=False)) == 4


def test_early_stopping_state_round_trips_and_continues() -> None:
    spec = EarlyStoppingSpec(patience=3, min_delta=0.0, monitor="val_accuracy")
    state, _ = run_stopping([0.5, 0.7, 0.6], spec)
    restored = StopState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state and restored.wait == 1
    resumed, improved = step(restored, 4, 0.65, spec)
    assert not improved and resumed.wait == 2 and not resumed.stopped
    resumed, _ = step(resumed, 5, 0.69, spec)
    assert resumed.stopped and resumed.best_epoch == 2


def test_disabled_early_stopping_never_stops_and_keeps_last() -> None:
    spec = EarlyStoppingSpec(enabled=False, patience=0)
    state, last = run_stopping([1.0, 2.0, 3.0], spec)
    assert not state.stopped and last == 3 and state.best_epoch == 1
    assert kept_epoch(state, last, spec) == 3


def test_nan_is_not_an_improvement() -> None:
    state, improved = step(StopState(), 1, float("nan"), EarlyStoppingSpec())
    assert not improved and state.best is None and state.wait == 1


# ------------------------------------------------------------------------------------------- metrics


def test_test_metrics_multiclass() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    metrics = classification_metrics([0, 1, 1, 2], probs, ["a", "b", "c"])
    assert metrics.accuracy == 0.75
    assert metrics.confusion_matrix == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    a, b, _ = metrics.per_class
    assert (a.precision, a.recall, a.support) == (0.5, 1.0, 1)
    assert (b.precision, b.recall, b.support) == (1.0, 0.5, 2)
    assert metrics.loss == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.3, 0.8])), rel=1e-3)  # 4 digits


def test_test_metrics_binary_sigmoid_and_unpredicted_class() -> None:
    metrics = classification_metrics([0, 1, 1], np.array([[0.1], [0.9], [0.2]]), ["cat", "dog"])
    assert metrics.confusion_matrix == [[1, 0], [1, 1]]
    assert metrics.per_class[1].precision == 1.0 and metrics.per_class[1].recall == 0.5
    assert cross_entropy(np.array([1]), np.array([[1.0]])) == pytest.approx(0.0, abs=1e-6)
    assert classification_metrics([0, 0], np.array([[0.1], [0.2]]), ["x", "y"]).per_class[1].precision == 0.0
    assert confusion_matrix([0, 1], [1, 1], 2).tolist() == [[0, 1], [0, 1]]


def test_misclassified_lists_the_most_confident_mistakes_first_up_to_the_limit() -> None:
    probs = np.array([[0.6, 0.4, 0.0], [0.1, 0.9, 0.0], [0.0, 0.2, 0.8], [0.05, 0.95, 0.0], [0.5, 0.5, 0.0]])
    mistakes, total = misclassified([1, 1, 0, 2, 2], probs, limit=2)
    assert total == 4  # image 1 is right
    assert [(m.index, m.true, m.predicted) for m in mistakes] == [(3, 2, 1), (2, 0, 2)]
    assert [m.probability for m in mistakes] == [0.95, 0.8]
    binary, total = misclassified([0, 1, 1], np.array([[0.7], [0.1], [0.9]]), limit=64)
    assert total == 2 and [(m.index, m.predicted, m.probability) for m in binary] == [
        (1, 0, pytest.approx(0.9)),
        (0, 1, pytest.approx(0.7)),
    ]
    assert misclassified([0, 1], np.array([[0.2], [0.8]]), limit=64) == ([], 0)


def test_misclassified_json_names_the_test_files_with_thumbnails(tmp_path: Path) -> None:
    """What `tj report` reads: bounded, files relative to the data folder, thumbnails that decode."""
    import base64

    from PIL import Image

    from transferjob.constants import MISCLASSIFIED_FILE, MISCLASSIFIED_LIMIT
    from transferjob_trainer.training import THUMBNAIL_SIZE, write_misclassified

    write_digits(tmp_path / "data", digits=[3, 8], size=200, seed=0)
    layout = scan_layout(str(tmp_path / "data"), parse_spec(spec_dict()).data)
    labels = np.asarray(layout.test.labels)
    always_3 = np.full((len(labels), 1), 0.2)  # a sigmoid that says "3" (class 0) for every image
    (tmp_path / "out").mkdir()
    write_misclassified(layout, always_3, str(tmp_path / "out"))
    document = json.loads((tmp_path / "out" / MISCLASSIFIED_FILE).read_text())
    eights = int(np.sum(labels == 1))
    assert document["testImages"] == len(labels) and document["misclassified"] == eights
    assert len(document["images"]) == min(eights, MISCLASSIFIED_LIMIT)
    first = document["images"][0]
    assert first["file"].startswith("test/8/") and (tmp_path / "data" / first["file"]).is_file()
    assert (first["true"], first["predicted"], first["probability"]) == ("8", "3", 0.8)
    header, data = first["thumbnail"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        assert image.format == "JPEG" and image.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)


def test_binary_test_accuracy_counts_as_validation_does() -> None:
    """A sigmoid of exactly 0.5 is the negative class for the test metrics, for the head's own counting
    and for Keras' BinaryAccuracy (validation during fine-tuning) alike."""
    import keras

    from transferjob_trainer.head import correct_predictions

    labels = np.array([0.0, 1.0, 0.0], np.float32).reshape(-1, 1)
    probabilities = np.array([0.5, 0.5000001, 0.4999], np.float32).reshape(-1, 1)
    test = classification_metrics([0, 1, 0], probabilities, ["no", "yes"]).accuracy
    head = float(correct_predictions(labels, probabilities, binary=True)) / 3
    keras_metric = keras.metrics.BinaryAccuracy()
    keras_metric.update_state(labels, probabilities)
    assert test == pytest.approx(head) == pytest.approx(float(keras_metric.result())) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- spec & paths


def test_spec_from_manifest_or_bare_spec() -> None:
    bare = spec_from_document(spec_dict())
    manifest = spec_from_document(
        {"apiVersion": "transferjob.io/v1alpha1", "kind": "TransferJob", "spec": spec_dict()}
    )
    assert bare == manifest
    with pytest.raises(InvalidSpecError, match="kind must be TransferJob"):
        spec_from_document({"kind": "Job", "spec": spec_dict()})
    with pytest.raises(InvalidSpecError, match=r"spec\.model\.imageSize"):
        spec_from_document(spec_dict(model={"base": "MobileNetV2", "imageSize": 8}))


def test_resolve_paths_overrides_and_file_uris() -> None:
    spec = parse_spec(spec_dict())
    paths = resolve_paths(spec, None, None, None)
    assert (paths.data_root, paths.output, paths.init_model) == ("/data", "/out", None)
    paths = resolve_paths(spec, "/mnt/data", "/mnt/out/", None)
    assert (paths.data_root, paths.output) == ("/mnt/data", "/mnt/out")


def test_resolve_paths_pvc_and_from_job_need_flags() -> None:
    pvc = parse_spec(spec_dict(data={"source": {"pvc": {"claimName": "imgs"}}}))
    with pytest.raises(InvalidSpecError, match="pass --data-dir"):
        resolve_paths(pvc, None, None, None)
    assert resolve_paths(pvc, "/mnt/imgs", None, None).data_root == "/mnt/imgs"
    from_job = parse_spec(
        {**spec_dict(), "mode": "FineTuning", "model": {"base": "MobileNetV2", "fromJob": "fe"}}
    )
    with pytest.raises(InvalidSpecError, match="--init-model"):
        resolve_paths(from_job, None, None, None)
    assert resolve_paths(from_job, None, None, "/m/model.keras").init_model == "/m/model.keras"


# -------------------------------------------------------------------------------------------- layout


def make_tree(root: Path, layout: dict[str, dict[str, int]], png: bytes) -> None:
    for split, classes in layout.items():
        for cls, n in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(png)


@pytest.fixture
def png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_scan_layout_labels_in_class_order(tmp_path: Path, png_bytes: bytes) -> None:
    make_tree(tmp_path, {s: {"b": 2, "a": 1} for s in ("train", "val", "test")}, png_bytes)
    (tmp_path / "train" / "a" / "notes.txt").write_text("ignored")
    spec = parse_spec(spec_dict()).data
    layout = scan_layout(str(tmp_path), spec)
    assert layout.classes == ("a", "b")
    assert layout.train.labels == (0, 1, 1)
    ordered = spec.model_copy(update={"class_names": ["b", "a"]})
    assert scan_layout(str(tmp_path), ordered).train.labels == (0, 0, 1)


def test_scan_layout_rejects_missing_class_and_extra_class(tmp_path: Path, png_bytes: bytes) -> None:
    make_tree(
        tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1}, "test": {"a": 1, "b": 1, "c": 1}}, png_bytes
    )
    spec = parse_spec(spec_dict()).data
    with pytest.raises(InvalidDataError, match=r"class 'b' is missing from val"):
        scan_layout(str(tmp_path), spec)
    (tmp_path / "val" / "b").mkdir()
    (tmp_path / "val" / "b" / "x.png").write_bytes(png_bytes)
    with pytest.raises(InvalidDataError, match=r"has class folder\(s\) c that the training set lacks"):
        scan_layout(str(tmp_path), spec)


def test_image_problem_detects_broken_files(png_bytes: bytes) -> None:
    assert image_problem(png_bytes) is None
    assert image_problem(b"") == "empty file"
    assert "unrecognised" in (image_problem(b"hello world, not an image") or "")
    assert image_problem(png_bytes[:-20]) is not None
    broken_crc = bytearray(png_bytes)
    broken_crc[40] ^= 0xFF
    assert image_problem(bytes(broken_crc)) is not None


def _encoded(fmt: str, mode: str = "RGB", size: int = 64) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size, size, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_truncated_jpeg_is_caught_though_pillow_verifies_it() -> None:
    import io

    from PIL import Image

    jpeg = _encoded("JPEG")
    cut = jpeg[: len(jpeg) * 2 // 3]
    with Image.open(io.BytesIO(cut)) as image:
        image.verify()  # Pillow's own check passes: it reads only a JPEG's headers
    assert image_problem(jpeg) is None
    assert image_problem(cut) == "truncated JPEG (no end-of-image marker)"
    assert image_problem(jpeg + b"\0" * 100) is None  # padding after the marker is fine


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("WEBP", "RGB"), ("WEBP", "RGBA"), ("PNG", "LA"), ("PNG", "L"), ("PNG", "P"), ("BMP", "RGB")],
)
def test_every_accepted_format_decodes_to_rgb(fmt: str, mode: str) -> None:
    """What the check accepts, the pipeline decodes: WebP with alpha too, which TensorFlow's WebP decoder
    refuses to convert itself."""
    from transferjob_trainer.pipeline import decode_resize

    data = _encoded(fmt, mode)
    assert image_problem(data) is None
    image = decode_resize(data, 32)
    assert image.shape == (32, 32, 3) and image.dtype.name == "uint8"


def test_invalid_images_fail_the_job_or_are_skipped_within_the_fraction(
    tmp_path: Path, png_bytes: bytes
) -> None:
    from transferjob_trainer.layout import check_images

    make_tree(
        tmp_path, {"train": {"a": 50, "b": 50}, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}, png_bytes
    )
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"not an image")
    strict = parse_spec(spec_dict()).data
    with pytest.raises(InvalidDataError, match=r"1 corrupt or undecodable image file\(s\): .*bad.png"):
        check_images(scan_layout(str(tmp_path), strict), strict)

    lenient = parse_spec(spec_dict(data={"source": {"hostPath": "/d"}, "skipInvalidImages": True})).data
    layout = check_images(scan_layout(str(tmp_path), lenient), lenient)
    assert len(layout.train) == 100 and layout.skipped == (
        (str(tmp_path / "train/a/bad.png"), "not an image (unrecognised header)"),
    )

    (tmp_path / "train" / "b" / "bad2.png").write_bytes(b"")  # 2 of 110 files: above the 1% default
    with pytest.raises(
        InvalidDataError, match=r"2 of 110 image files \(1.8%\) .* data.maxInvalidFraction \(0.01\)"
    ):
        check_images(scan_layout(str(tmp_path), lenient), lenient)

    for f in (tmp_path / "val" / "b").iterdir():  # skipping may not leave a class without images
        f.write_bytes(b"broken")
    (tmp_path / "train" / "b" / "bad2.png").unlink()
    generous = lenient.model_copy(update={"max_invalid_fraction": 0.5})
    with pytest.raises(InvalidDataError, match=r"val/b has no decodable image left"):
        check_images(scan_layout(str(tmp_path), generous), generous)


def test_termination_log_written_or_skipped(tmp_path: Path) -> None:
    from transferjob.progress import Failed

    event = Failed(reason="InvalidData", message="x" * 10000, permanent=True)
    target = tmp_path / "term"
    assert write_termination_log(str(target), event)
    assert len(target.read_bytes()) <= 4096 and json.loads(target.read_text())["reason"] == "InvalidData"
    assert not write_termination_log(str(tmp_path / "missing" / "term"), event)


# ------------------------------------------------------------------------------------------ modeling


@pytest.mark.parametrize("module", sorted({b.preprocess_module for b in BASES.values()}))
def test_preprocessing_layer_matches_keras_preprocess_input(module: str) -> None:
    """Our stock-layer preprocessing equals the base's own `preprocess_input`."""
    import importlib

    from transferjob_trainer.modeling import preprocessing_layer

    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = importlib.import_module(f"keras.applications.{module}").preprocess_input(images.copy())
    layer = preprocessing_layer(module)
    got = images if layer is None else np.asarray(layer(images))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_saved_base_cut_convention() -> None:
    import keras

    from transferjob_trainer.modeling import cut_layer

    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, name="conv")(image)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    named = keras.layers.Dense(4, name="features")(pooled)
    with_features = keras.Model(image, keras.layers.Dense(2, name="out")(named))
    assert cut_layer(with_features).name == "features"
    without = keras.Model(image, keras.layers.Dense(2, name="out")(pooled))
    assert cut_layer(without).name == "gap"


def test_fine_tune_freezes_before_layer_and_all_batchnorm() -> None:
    import keras

    from transferjob.models import HeadSpec
    from transferjob_trainer.modeling import build_model, find_base, set_fine_tune, split_model

    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, name="c1")(image)
    x = keras.layers.Conv2D(2, 3, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(2, 1, name="c3")(x)
    base = keras.Model(image, x, name="base")
    model = build_model(base, 3, HeadSpec(), 8, "mobilenet_v2")
    assert not find_base(model).trainable
    set_fine_tune(model, "c2")
    trainable = {layer.name: layer.trainable for layer in find_base(model).layers}
    assert trainable == {base.layers[0].name: False, "c1": False, "c2": True, "bn": False, "c3": True}
    parts = split_model(model)
    assert parts.head.layers[-1] is model.get_layer("predictions")
    with pytest.raises(InvalidSpecError, match="not a layer of the base"):
        set_fine_tune(model, "nope")


# ------------------------------------------------------------------------------------------ pipeline


def test_cache_policy() -> None:
    from transferjob_trainer.pipeline import cached_image_bytes, should_cache

    needed = cached_image_bytes(2000, 224)
    assert needed == 2000 * 224 * 224 * 3
    assert should_cache("auto", needed, available=4 * needed)
    assert not should_cache("auto", needed, available=needed)
    assert should_cache("memory", needed, available=0)
    assert not should_cache("none", 1, available=1 << 40)


def test_augmented_views_differ_between_passes_and_batches() -> None:
    """Each pass over the data draws new transforms: the cached views are distinct views."""
    import tensorflow as tf

    from transferjob.models import AugmentationSpec
    from transferjob_trainer.pipeline import build_augmenter

    augment = build_augmenter(AugmentationSpec(flip="none", rotation=0.1, zoom=0.1, crop=0.1), seed=1)
    assert augment is not None
    assert build_augmenter(AugmentationSpec(enabled=False), seed=1) is None
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(np.concatenate([images, images])).batch(4).map(augment)
    first, again = [b.numpy() for b in ds], [b.numpy() for b in ds]
    assert first[0].shape == images.shape
    assert not np.allclose(first[0], images)
    assert not np.allclose(first[0], first[1])
    assert not np.allclose(first[0], again[0])


# ------------------------------------------------------------------------------------------ head trainer


def _head(n_inputs: int, units: int, activation: str, dropout: float) -> keras.Model:
    import keras

    features = keras.Input((n_inputs,))
    x = keras.layers.Dropout(dropout)(features) if dropout else features
    return keras.Model(features, keras.layers.Dense(units, activation=activation)(x))


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("binary", [False, True])
def test_head_trainer_matches_keras_on_the_same_batches(binary: bool, streaming: bool) -> None:
    """One epoch of the head trainer (features in memory or streamed) = Keras' train_on_batch over the
    batches of `epoch_order`, then evaluate: the same weights (optimizer state included) and the same
    loss and accuracy, train and validation; a new pipeline every epoch does not retrace the epoch."""
    import tensorflow as tf

    from transferjob_trainer.head import (
        SCORE_BATCH,
        HeadTrainer,
        StreamingHeadTrainer,
        epoch_order,
        predict_features,
    )
    from transferjob_trainer.modeling import compile_model

    rng = np.random.default_rng(3)
    x, val_x = rng.normal(size=(70, 12)).astype("float32"), rng.normal(size=(30, 12)).astype("float32")
    if binary:
        y = rng.integers(0, 2, (70, 1)).astype("float32")
        val_y = rng.integers(0, 2, (30, 1)).astype("float32")
    else:
        y, val_y = rng.integers(0, 4, 70).astype("int32"), rng.integers(0, 4, 30).astype("int32")
    units, activation = (1, "sigmoid") if binary else (4, "softmax")
    ours, reference = _head(12, units, activation, 0.0), _head(12, units, activation, 0.0)
    reference.set_weights(ours.get_weights())
    for model in (ours, reference):
        compile_model(model, "adam", 0.05, binary)
    val = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(SCORE_BATCH)
    if streaming:

        def batches(epoch: int) -> tf.data.Dataset:
            order = epoch_order(7, epoch, 70)
            return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(16)

        trainer: HeadTrainer | StreamingHeadTrainer = StreamingHeadTrainer(ours, batches, val, binary=binary)
    else:
        trainer = HeadTrainer(ours, [x], y, val_x, val_y, batch_size=16, seed=7, binary=binary)

    for epoch in range(2):
        logs = trainer(epoch)
        order = epoch_order(7, epoch, 70)
        steps = [order[i : i + 16] for i in range(0, 70, 16)]
        per_batch = [reference.train_on_batch(x[b], y[b], return_dict=True) for b in steps]
        for weight, expected in zip(ours.get_weights(), reference.get_weights(), strict=True):
            np.testing.assert_allclose(weight, expected, rtol=1e-4, atol=1e-5)
        # fit's epoch figures: the batch figures averaged with the batch sizes as weights.
        sizes = [len(b) for b in steps]
        for key in ("loss", "accuracy"):
            expected = np.average([logs_[key] for logs_ in per_batch], weights=sizes)
            assert logs[key] == pytest.approx(expected, rel=1e-4)
        evaluated = reference.evaluate(val_x, val_y, batch_size=30, return_dict=True, verbose=0)
        assert logs["val_loss"] == pytest.approx(evaluated["loss"], rel=1e-4)
        assert logs["val_accuracy"] == pytest.approx(evaluated["accuracy"], rel=1e-5)
    assert int(ours.optimizer.iterations) == 10
    assert trainer._epoch.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(
        predict_features(ours, val), reference.predict(val_x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_head_trainer_cycles_views_trains_dropout_and_orders_by_seed_and_epoch() -> None:
    """Epoch e trains on view e mod K; the order is a permutation fixed by (seed, epoch); dropout is on
    in training only (validation of the same weights is deterministic)."""
    from transferjob_trainer.head import HeadTrainer, epoch_order
    from transferjob_trainer.modeling import compile_model

    order = epoch_order(1, 4, 50)
    assert sorted(order.tolist()) == list(range(50))
    np.testing.assert_array_equal(order, epoch_order(1, 4, 50))
    assert not np.array_equal(order, epoch_order(1, 5, 50))
    assert not np.array_equal(order, epoch_order(2, 4, 50))

    rng = np.random.default_rng(0)
    views = np.stack([rng.normal(size=(40, 8)), np.zeros((40, 8))]).astype("float32")
    y = rng.integers(0, 3, 40).astype("int32")
    head = _head(8, 3, "softmax", 0.5)
    compile_model(head, "sgd", 0.0, binary=False)  # learning rate 0: the weights never move
    trainer = HeadTrainer(head, views, y, views[0], y, batch_size=8, seed=0, binary=False)
    first, second, third = trainer(0), trainer(1), trainer(2)
    # View 1 is all zeros: its loss is that of the bias alone (zero: ln 3), whatever dropout does.
    assert second["loss"] == pytest.approx(np.log(3), rel=1e-5)
    assert first["loss"] != pytest.approx(np.log(3), rel=1e-3)
    assert third["val_loss"] == pytest.approx(first["val_loss"], rel=1e-6)
    assert third["loss"] != pytest.approx(first["loss"], rel=1e-6)  # dropout draws differ per epoch


# ------------------------------------------------------------------------------------------ feature cache


def _color_cache(
    checkpoints: Path, splits: dict, views: int, monkeypatch: pytest.MonkeyPatch, data: str = "d1"
) -> tuple:
    """A feature cache of the colour-coded splits in shards of 5, and the pass's sources."""
    from tests.trainer.conftest import COLOR_COUNTS
    from transferjob_trainer.features import FeatureCache, Source, reorder, train_order
    from transferjob_trainer.pipeline import image_dataset

    monkeypatch.setenv("TJ_FEATURE_SHARD_IMAGES", "5")
    cache = FeatureCache.open(str(checkpoints), {"data": data}, dict(COLOR_COUNTS), views)
    cache.bind_base({"digest": "base-1", "featureShape": [3]})
    train = reorder(splits["train"], train_order(len(splits["train"]), 0))
    ordered = {**splits, "train": train}
    sources = {name: Source(s, image_dataset(s, 4, binary=False, cache=False)) for name, s in ordered.items()}
    return cache, sources


PARTS = ("train", "val", "test")


def _compute(cache, sources, extract, one_pass: bool = True) -> list[int]:  # type: ignore[no-untyped-def]
    counted: list[int] = []
    missing = cache.missing(PARTS)
    cache.compute(
        missing, sources, extract, one_pass, image_size=4, augment=None, batch_size=4, on_batch=counted.append
    )
    return counted


def _shard_files(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.npy"))}


def test_feature_pass_writes_shards_and_the_head_reads_them_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every image's features land once in a shard of its part, with its label, training images in their
    seeded order; a small part reads back into arrays; an epoch streams its view's every vector once, in
    batches, in an order fixed by (seed, epoch); validation and test stream in file order. One pass or
    one call per shard: same bytes."""
    from tests.trainer.conftest import COLOR_COUNTS, color_splits, mean_colour_features

    splits = color_splits(tmp_path / "images")
    cache, sources = _color_cache(tmp_path / "a", splits, 2, monkeypatch)
    counted = _compute(cache, sources, mean_colour_features)
    assert sum(counted) == 2 * 23 + 7 + 6 and max(counted) == 4
    assert cache.missing(PARTS) == []
    names = sorted(p.name for p in Path(cache.local).glob("*.npy"))
    assert names == [
        *(f"test-{i:05d}.npy" for i in range(2)),
        *(f"train-v{v}-{i:05d}.npy" for v in range(2) for i in range(5)),
        *(f"val-{i:05d}.npy" for i in range(2)),
    ]
    assert not [p for p in Path(cache.local).iterdir() if p.name.startswith(".tmp-")]
    shard = np.load(Path(cache.local) / "train-v0-00001.npy")
    assert shard.shape == (5,) and shard.dtype.names == ("x", "y")
    train_files = sources["train"].split.files[5:10]
    assert [int(r) // 8 for r in shard["x"][:, 0]] == [int(Path(f).stem) for f in train_files]
    np.testing.assert_array_equal(shard["y"] * 60, shard["x"][:, 2])  # each vector with its own label

    features = cache.feature_set(PARTS, binary=False)
    x, y = features.arrays("train-v1")  # small feature sets are held in memory
    shards = [np.load(Path(cache.local) / f"train-v1-{i:05d}.npy") for i in range(5)]
    np.testing.assert_array_equal(x, np.concatenate([shard["x"] for shard in shards]))
    assert y.dtype == np.int32 and (y * 60 == x[:, 2]).all()
    assert features.fits_in_memory()
    monkeypatch.setenv("TJ_FEATURES_IN_MEMORY_BYTES", "100")
    assert not features.fits_in_memory()
    epochs = {}
    for epoch in (0, 1, 2):
        batches = list(features.train_batches(epoch, 4, seed=5))
        assert [len(y) for _, y in batches] == [4] * 5 + [3]
        x = np.concatenate([b[0].numpy() for b in batches])
        y = np.concatenate([b[1].numpy() for b in batches])
        assert sorted((x[:, 0] // 8).astype(int).tolist()) == list(range(23))
        np.testing.assert_array_equal(y * 60, x[:, 2])
        epochs[epoch] = x[:, 0].tolist()
    again = np.concatenate([b[0].numpy() for b in features.train_batches(0, 4, seed=5)])
    assert again[:, 0].tolist() == epochs[0]
    assert epochs[0] != epochs[2] and epochs[0] != epochs[1]
    for part, green in (("val", 80), ("test", 160)):
        x = np.concatenate([b[0].numpy() for b in features.eval_batches(part, 4)])
        assert x[:, 0].tolist() == [8.0 * i for i in range(COLOR_COUNTS[part])]
        assert set(x[:, 1].tolist()) == {green}

    def whole_shards(batches, on_batch):  # type: ignore[no-untyped-def]
        return [np.concatenate(list(mean_colour_features(batches, on_batch)))]

    other, sources = _color_cache(tmp_path / "b", splits, 2, monkeypatch)
    _compute(other, sources, whole_shards, one_pass=False)
    assert _shard_files(other.local) == _shard_files(cache.local)


def test_feature_cache_keeps_finished_shards_and_drops_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed pass leaves whole shards and no partial file; a restart computes only the missing ones
    (their bytes as an uninterrupted pass writes them) and keeps the finished files untouched. A cache
    from other inputs, another base or a torn shard is not reused."""
    from tests.trainer.conftest import color_splits, mean_colour_features
    from transferjob_trainer.features import FeatureCache

    splits = color_splits(tmp_path / "images")
    whole, sources = _color_cache(tmp_path / "whole", splits, 1, monkeypatch)
    _compute(whole, sources, mean_colour_features)

    def killed_after_three_batches(batches, on_batch):  # type: ignore[no-untyped-def]
        for i, features in enumerate(mean_colour_features(batches, on_batch)):
            if i == 3:
                raise RuntimeError("killed")
            yield features

    cache, sources = _color_cache(tmp_path / "run", splits, 1, monkeypatch)
    everything = len(cache.missing(PARTS))
    with pytest.raises(RuntimeError, match="killed"):
        _compute(cache, sources, killed_after_three_batches)
    folder = Path(cache.local)
    assert sorted(p.name for p in folder.glob("*.npy")) == ["train-v0-00000.npy", "train-v0-00001.npy"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    (folder / ".tmp-train-v0-00002.npy-x").write_bytes(b"partial")  # as SIGKILL would leave it
    finished = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}

    cache, sources = _color_cache(tmp_path / "run", splits, 1, monkeypatch)
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    assert len(cache.missing(PARTS)) == everything - 2
    assert sum(_compute(cache, sources, mean_colour_features)) == 23 + 7 + 6 - 10
    assert {name: (folder / name).stat().st_mtime_ns for name in finished} == finished
    assert _shard_files(cache.local) == _shard_files(whole.local)

    torn = folder / "val-00001.npy"
    torn.write_bytes(torn.read_bytes()[:-4])
    assert [s.name for s in cache.missing(PARTS)] == ["val-00001.npy"]

    stale = FeatureCache.open(str(tmp_path / "run"), {"data": "d2"}, {"train": 23, "val": 7, "test": 6}, 1)
    assert len(stale.missing(PARTS)) == everything and not list(folder.glob("*.npy"))

    cache, sources = _color_cache(tmp_path / "whole", splits, 1, monkeypatch)
    assert cache.missing(PARTS) == []
    cache.bind_base({"digest": "base-2", "featureShape": [3]})
    assert len(cache.missing(PARTS)) == everything and not list(Path(cache.local).glob("*.npy"))


# ------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("how", ["frozen", "variables", "base frozen beforehand"])
def test_saved_model_serves_the_model_frozen_or_with_variables(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the size limit the serving graph holds the weights as constants; above it, variables;
    feature extraction folds its base on a thread beforehand (`FrozenBase`) and the head at export.
    Either way the images signature computes the model and names its classes, most probable first."""
    import keras
    import tensorflow as tf

    from transferjob.constants import SERVING_SIGNATURE
    from transferjob_trainer import export, modeling
    from transferjob_trainer.inference import inference_function, serving_function

    image = keras.Input((8, 8, 3), name="transferjob_image")
    x = keras.layers.Conv2D(4, 3)(image)
    x = keras.layers.BatchNormalization()(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=modeling.POOL_LAYER)(x)
    output = keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.5)(x))
    model = keras.Model(image, output)
    frozen = how != "variables"
    if not frozen:
        monkeypatch.setattr(export, "FREEZE_LIMIT_BYTES", 0)
    path = str(tmp_path / "sm")
    if how == "base frozen beforehand":
        parts = modeling.split_model(model)
        extract = inference_function(parts.extractor)
        base = export.FrozenBase(extract)
        export.write_saved_model(
            serving_function(extract, parts.head), path, ["a", "b", "c"], (base, parts.head)
        )
    else:
        export.write_saved_model(inference_function(model), path, ["a", "b", "c"])

    images = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype("float32")
    loaded = tf.saved_model.load(path)
    serving = loaded.signatures[export.IMAGES_SIGNATURE]
    assert list(serving.structured_input_signature[1]) == ["transferjob_image"]
    served = serving(transferjob_image=tf.constant(images))
    assert sorted(served) == ["classes", "scores"]
    probabilities = model.predict(images, verbose=0)
    order = np.argsort(-probabilities, axis=-1)
    np.testing.assert_allclose(
        served["scores"].numpy(), np.take_along_axis(probabilities, order, -1), atol=1e-6
    )
    assert served["classes"].numpy().astype(str).tolist() == np.array(["a", "b", "c"])[order].tolist()
    assert (len(loaded.signatures[SERVING_SIGNATURE].variables) == 0) is frozen


def test_a_binary_models_one_unit_is_the_second_class() -> None:
    """The sigmoid unit of a two-class model is P(label 1); serving names both classes."""
    import tensorflow as tf

    from transferjob_trainer.export import labelled

    served = labelled(tf.constant([[0.8], [0.1]]), ["cat", "dog"])
    assert served["classes"].numpy().astype(str).tolist() == [["dog", "cat"], ["cat", "dog"]]
    np.testing.assert_allclose(served["scores"].numpy(), [[0.8, 0.2], [0.9, 0.1]], atol=1e-7)


def test_every_image_pipeline_runs_without_the_autotuning_thread(tmp_path: Path, png_bytes: bytes) -> None:
    """`static_tuning` at the root reaches every pipeline built on the images (see its docstring)."""
    from transferjob_trainer.layout import Split
    from transferjob_trainer.pipeline import eval_batches, image_dataset, shuffled_images, training_batches

    (tmp_path / "a.png").write_bytes(png_bytes)
    split = Split("train", str(tmp_path), files=(str(tmp_path / "a.png"),) * 3, labels=(0, 1, 0))
    for cache in (True, False):
        images = image_dataset(split, 8, binary=False, cache=cache)
        shuffled = shuffled_images(split, 8, binary=False, seed=0, cached=images if cache else None)
        for ds in (images, shuffled, training_batches(shuffled, 2, None), eval_batches(images, 2)):
            assert ds.options().autotune.enabled is False
        assert [b[0].shape[0] for b in eval_batches(images, 2)] == [2, 1]


def test_uncached_training_images_shuffle_files_not_decoded_images(tmp_path: Path) -> None:
    """Without the cache, the file list is shuffled and then decoded: a new order every epoch, every image
    once per epoch, each image still paired with its own label."""
    import numpy as np
    from PIL import Image

    from transferjob_trainer.layout import Split
    from transferjob_trainer.pipeline import shuffled_images

    files = []
    for i in range(12):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(np.full((4, 4, 3), i * 20, np.uint8)).save(path)
        files.append(str(path))
    split = Split("train", str(tmp_path), files=tuple(files), labels=tuple(range(12)))
    ds = shuffled_images(split, 4, binary=False, seed=3, cached=None)
    epochs = [[int(label) for _, label in ds] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(12))
    for image, label in ds.take(3):  # each image is the file its label names: decoded after the shuffle
        assert int(image[0, 0, 0]) == int(label) * 20


# ------------------------------------------------------------------------------------------ SIGTERM


@pytest.fixture
def sigterm_handler() -> Iterator[None]:
    """The trainer's SIGTERM handler installed for one test; the process-wide flag cleared after it."""
    previous = signal.signal(signal.SIGTERM, errors.on_sigterm)
    yield
    signal.signal(signal.SIGTERM, previous)
    errors.TERMINATED.clear()


def run_execute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body) -> tuple[int, list[dict]]:
    """`__main__.execute` with `run.run` replaced by `body`; returns the exit code and the events."""
    from transferjob_trainer import __main__ as cli
    from transferjob_trainer import paths as paths_module
    from transferjob_trainer import run as run_module
    from transferjob_trainer.report import Reporter

    monkeypatch.setattr(run_module, "load_spec", lambda path: parse_spec(spec_dict()))
    monkeypatch.setattr(paths_module, "resolve_paths", lambda *args: None)
    monkeypatch.setattr(run_module, "run", lambda spec, paths, reporter, job: body())
    stream = io.StringIO()
    args = cli.build_parser().parse_args(["--spec", "spec.json"])  # every flag the CLI has, defaulted
    rc = cli.execute(args, Reporter(stream, str(tmp_path / "termination.log")))
    return rc, [json.loads(line) for line in stream.getvalue().splitlines()]


def test_sigterm_wrapped_in_another_exception_still_reads_interrupted(
    sigterm_handler: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TensorFlow re-raises an exception from inside a tf.function's argument binding as a TypeError."""

    def body() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises as soon as this returns
        except Exception as error:
            raise TypeError(f"Binding inputs to tf.function failed due to `{error}`") from None

    rc, events = run_execute(monkeypatch, tmp_path, body)
    assert rc == 143
    assert events[-1]["reason"] == "Interrupted" and events[-1]["permanent"] is False
    assert json.loads((tmp_path / "termination.log").read_text())["reason"] == "Interrupted"


def test_sigterm_swallowed_by_library_code_ends_the_run_between_epochs(
    sigterm_handler: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def body() -> None:
        with contextlib.suppress(Exception):  # what a careless library does
            os.kill(os.getpid(), signal.SIGTERM)
        errors.raise_if_terminated()  # train_epochs does this after each epoch
        raise AssertionError("the run went on after SIGTERM")

    rc, events = run_execute(monkeypatch, tmp_path, body)
    assert rc == 143 and events[-1]["reason"] == "Interrupted"


# ------------------------------------------------------------------------------------------ TensorBoard


def test_tensorboard_scalars_are_read_back_by_event_accumulator_at_full_precision(tmp_path: Path) -> None:
    """What a user's `EventAccumulator(...).Scalars(tag)` gets: every epoch, Keras' exact float32 values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from transferjob_trainer.tensorboard_log import TensorBoardLog

    rng = np.random.default_rng(7)
    epochs = [
        (
            {
                "loss": float(np.float32(rng.uniform(0.1, 2.0))),
                "accuracy": float(np.float32(rng.uniform(0.3, 1.0))),
                "val_loss": float(np.float32(rng.uniform(0.1, 2.0))),
                "val_accuracy": float(np.float32(rng.uniform(0.3, 1.0))),
            },
            float(np.float32(1e-5 / 3)),
        )
        for _ in range(4)
    ]
    board = TensorBoardLog(str(tmp_path / "tensorboard"))
    for epoch, (logs, lr) in enumerate(epochs, start=1):
        board.write(epoch, logs, lr)

    expected = {
        ("train", "epoch_loss"): [logs["loss"] for logs, _ in epochs],
        ("train", "epoch_accuracy"): [logs["accuracy"] for logs, _ in epochs],
        ("train", "epoch_learning_rate"): [lr for _, lr in epochs],
        ("validation", "epoch_loss"): [logs["val_loss"] for logs, _ in epochs],
        ("validation", "epoch_accuracy"): [logs["val_accuracy"] for logs, _ in epochs],
    }
    # More digits than `.status` keeps, so rounding anywhere on the way would show.
    assert any(f"{v:.4g}" != repr(v) for values in expected.values() for v in values)
    for split in ("train", "validation"):
        accumulator = EventAccumulator(str(tmp_path / "tensorboard" / split)).Reload()
        tags = {tag for s, tag in expected if s == split}
        assert set(accumulator.Tags()["scalars"]) == tags
        for tag in tags:
            events = accumulator.Scalars(tag)
            assert [e.step for e in events] == [1, 2, 3, 4], (split, tag)
            assert [e.value for e in events] == expected[split, tag], (split, tag)


# ------------------------------------------------------------------------------------------ status size


def test_a_thousand_classes_keep_the_status_far_below_etcds_limit(tmp_path: Path) -> None:
    """The trainer's final event (what `.status` is made of) holds a bounded summary of the test metrics;
    metrics.json holds every figure. etcd refuses objects over 1.5 MiB; a 1,000-class confusion matrix
    alone is about 2 MB of JSON."""
    import datetime as dt
    from types import SimpleNamespace

    from transferjob.constants import STATUS_WORST_CLASSES, TERMINATION_MESSAGE_LIMIT
    from transferjob.models import ModelArtifacts, Phase, TransferJobStatus
    from transferjob.progress import termination_message
    from transferjob.status import Progress, Verdict, job_status
    from transferjob_trainer.training import finished_event

    classes = [f"class-{i:04d}" for i in range(1000)]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1000), 3)
    probabilities = rng.dirichlet(np.ones(1000) * 0.05, size=len(labels)).astype(np.float32)
    test = classification_metrics(labels, probabilities, classes)
    assert len(json.dumps(test.to_dict())) > 1_500_000  # what used to go into .status
    spec = parse_spec(spec_dict())
    history = [{"epoch": e, "loss": 1.0, "accuracy": 0.5, "valLoss": 1.0, "valAccuracy": 0.5} for e in (1, 2)]
    state = SimpleNamespace(history=history, epochs_done=2)
    metrics_file = tmp_path / "metrics.json"
    artifacts = ModelArtifacts(uri=str(tmp_path / "model.keras"), metrics_uri=str(metrics_file))
    event = finished_event(spec, SimpleNamespace(classes=classes), state, 2, test, artifacts, str(tmp_path))

    full = json.loads(metrics_file.read_text())["test"]
    assert len(full["perClass"]) == 1000 and len(full["confusionMatrix"]) == 1000
    assert event.test.classes == 1000 and event.test.accuracy == test.accuracy
    assert event.test.confusion_matrix == []
    recalls = sorted(c.recall for c in test.per_class)[:STATUS_WORST_CLASSES]
    assert [c.recall for c in event.test.per_class] == recalls  # the weakest classes, weakest first

    status = job_status(
        Progress.of([event]),
        Verdict(Phase.SUCCEEDED),
        spec,
        TransferJobStatus(),
        dt.datetime.now(dt.timezone.utc),
    )
    size = len(json.dumps(status.to_dict()))
    print(f"1,000 classes: .status is {size} bytes of JSON (the full test metrics: {len(json.dumps(full))})")
    assert size < 20_000
    assert len(termination_message(event).encode()) <= TERMINATION_MESSAGE_LIMIT


def test_few_classes_keep_every_figure_in_the_status() -> None:
    test = classification_metrics([0, 1, 2], np.eye(3, dtype=np.float32), ["a", "b", "c"])
    assert test.summary() == test and len(test.per_class) == 3 and test.classes == 3


# ------------------------------------------------------------------------------------------- progress


def test_step_meter_reports_at_a_bounded_rate_with_rate_and_time_left() -> None:
    from transferjob.progress import StepProgress
    from transferjob_trainer.report import StepMeter

    now = [0.0]
    sent: list[StepProgress] = []
    meter = StepMeter(sent.append, "training", 1000, interval=10.0, clock=lambda: now[0])
    meter.new_epoch(1, epochs_left=2)
    for _ in range(100):  # 100 batches of 10 images, one every 0.5 s: 50 s in all
        now[0] += 0.5
        meter.advance(10)
    assert len(sent) == 5  # at 10, 20, 30, 40 and 50 s: never more than one per interval
    last = sent[-1]
    assert (last.done, last.total, last.epoch) == (1000, 1000, 1)
    assert last.images_per_second == 20.0
    assert last.remaining_seconds == 100.0  # two more epochs of 1000 images at 20 images/s
    meter.new_epoch(2, epochs_left=1)
    now[0] += 10
    meter.advance(5000)  # never more than the step has
    assert sent[-1].done == 1000 and sent[-1].epoch == 2
