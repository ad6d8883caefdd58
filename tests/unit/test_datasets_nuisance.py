"""The digits writer's nuisance option: seeded, varied, and the digit still there to read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from transferjob.datasets import (
    NUISANCE_MIN_CONTRAST,
    main,
    render_clean,
    render_with_nuisance,
    write_digits,
)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def test_nuisance_images_are_seeded_and_variants_differ(tmp_path: Path) -> None:
    first = write_digits(tmp_path / "a", digits=[2, 7], size=32, seed=3, nuisance=True, variants=3)
    again = write_digits(tmp_path / "b", digits=[2, 7], size=32, seed=3, nuisance=True, variants=3)
    assert again.counts == first.counts
    clean = write_digits(tmp_path / "d", digits=[2, 7], size=32, seed=3)

    assert first.to_dict()["nuisance"] is True and first.variants == 3
    assert first.counts["train"] == {d: 3 * n for d, n in clean.counts["train"].items()}
    assert first.counts["val"] == clean.counts["val"] and first.counts["test"] == clean.counts["test"]
    for split, digit in (("train", "2"), ("val", "7"), ("test", "2")):
        assert len(list((tmp_path / "a" / split / digit).iterdir())) == first.counts[split][digit]

    index = sorted((tmp_path / "d" / "train" / "2").iterdir())[0].stem
    renderings = [tmp_path / "a" / "train" / "2" / f"{index}{suffix}.png" for suffix in ("", "-1", "-2")]
    for path in renderings:
        np.testing.assert_array_equal(pixels(path), pixels(tmp_path / "b" / path.relative_to(tmp_path / "a")))
    assert not np.array_equal(pixels(renderings[0]), pixels(renderings[1]))
    assert not np.array_equal(pixels(renderings[1]), pixels(renderings[2]))
    scan = load_digits().images[int(index)]
    np.testing.assert_array_equal(
        pixels(renderings[0]), render_with_nuisance(scan, 32, np.random.default_rng([3, int(index), 0]))
    )
    assert not np.array_equal(
        pixels(renderings[0]), render_with_nuisance(scan, 32, np.random.default_rng([4, int(index), 0]))
    )


def test_nuisance_moves_scales_and_recolours_the_digit() -> None:
    """Over many renderings of one scan, position, size and polarity all vary; the ink stands out."""
    scan = load_digits().images[0]
    rng = np.random.default_rng(0)
    centres, extents, darker_ink = [], [], []
    for _ in range(200):
        image = render_with_nuisance(scan, 32, rng).astype(np.float32)
        assert image.shape == (32, 32, 3)
        grey = image.mean(axis=-1)
        background = np.median(grey)
        ink = np.abs(grey - background) > NUISANCE_MIN_CONTRAST / 2
        rows, cols = np.nonzero(ink)
        assert ink.sum() >= 20, "the digit must stand out of the background"
        centres.append((rows.mean(), cols.mean()))
        extents.append(np.percentile(rows, 95) - np.percentile(rows, 5))
        darker_ink.append(grey[ink].mean() < background)
    assert np.std(np.array(centres), axis=0).min() > 1.5
    assert np.std(extents) > 1.0
    assert 0.2 < np.mean(darker_ink) < 0.8


def test_clean_rendering_is_bright_ink_on_black() -> None:
    image = render_clean(load_digits().images[0], 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [0, 0, 0] and image.max() > 200


def test_variants_need_nuisance(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variants"):
        write_digits(tmp_path / "x", digits=[1], variants=2)
    with pytest.raises(ValueError, match="variants"):
        write_digits(tmp_path / "x", digits=[1], nuisance=True, variants=0)


def test_cli_writes_nuisance_variants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["digits", str(tmp_path / "d"), "--digits", "0", "--size", "16", "--nuisance", "--variants", "2"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["nuisance"] is True and summary["variants"] == 2
    assert summary["totals"]["train"] == 2 * round(178 * 0.7)
    assert main(["digits", str(tmp_path / "e"), "--digits", "0", "--variants", "2"]) == 2
