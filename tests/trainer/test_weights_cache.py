"""`model.weightsCache`: ImageNet weights found in the cache load without any download.

This machine cannot reach the internet, so a run that tried to download would fail. The cache is seeded
the way a platform team would (the file Keras names, in the cache's models/ folder), with random weights
written in Keras' legacy HDF5 layout, and the exported model must hold exactly those weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import Digits, make_spec

pytestmark = pytest.mark.trainer

#: The file `keras.applications.MobileNetV2(weights="imagenet", include_top=False)` looks for at 96 px.
MOBILENET_V2_96 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"


def seed_cache(cache: Path) -> np.ndarray:
    """Write MobileNetV2 weights (random, seeded) where Keras looks; return its first kernel."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    model = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
    (cache / "models").mkdir(parents=True)
    with h5py.File(cache / "models" / MOBILENET_V2_96, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return np.asarray(model.get_layer("Conv1").kernel)


def test_imagenet_weights_load_from_the_cache_without_download(
    digits: Digits, run_trainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    monkeypatch.delenv("KERAS_HOME", raising=False)
    cache = tmp_path / "keras-cache"
    kernel = seed_cache(cache)
    spec = make_spec(
        digits.small_target,
        tmp_path / "out",
        model={
            "base": "MobileNetV2",
            "weights": "imagenet",
            "imageSize": 96,
            "weightsCache": {"hostPath": str(cache)},
        },
        training={"epochs": 1},
    )
    run = run_trainer(spec)
    assert run.rc == 0, run.stderr[-3000:]
    assert f"weights cache: {cache}/models" in run.stderr
    exported = keras.models.load_model(run.finished.model.uri)
    base = next(layer for layer in exported.layers if isinstance(layer, keras.Model))
    np.testing.assert_array_equal(np.asarray(base.get_layer("Conv1").kernel), kernel)


def test_a_cache_the_trainer_cannot_write_to_is_an_invalid_spec(
    digits: Digits, run_trainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keras silently ignores a cache folder it cannot write to and downloads into /tmp instead: say so.

    (A file stands in for an unwritable folder: these tests run as root, which may write anywhere.)
    """
    monkeypatch.delenv("KERAS_HOME", raising=False)
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    spec = make_spec(
        digits.small_target,
        tmp_path / "out",
        model={"base": "MobileNetV2", "imageSize": 96, "weightsCache": {"hostPath": str(not_a_folder)}},
    )
    run = run_trainer(spec)
    assert run.final.reason == "InvalidSpec", run.final
    assert f"model.weightsCache: {not_a_folder} is not a folder the trainer can write to" in run.final.message
