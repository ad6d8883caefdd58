"""Small real image datasets for demos and tests, written in the layout the trainer reads.

scikit-learn ships the UCI handwritten digits (1797 8x8 greyscale scans) inside its wheel, so they are
available on machines without internet access. Written out as PNG files in the Keras
`image_dataset_from_directory` layout (`train/`, `val/`, `test/`, one sub-folder per class) they give a
classic transfer task that no one here drew: pretrain a network on digits 0-4, transfer it to 5-9.

The split is stratified and seeded, so the same arguments always write the same files; file names keep
the index of the sample in scikit-learn's array, so any image can be traced back to its source.

Clean, centred 8x8 digits are too easy to show what transfer is for: a small CNN trained from scratch
reads them from 20 images, so a source network has nothing to teach it. `nuisance=True` renders each
digit the way transfer's textbook case needs, a target that is hard for scratch because of variation
a source has already learned to ignore: random size and position in the canvas, a small rotation, a
random grey background with stray strokes and noise, and ink lighter or darker than the background.
`variants` renders each training image several times, with different nuisance, to give a source
network more to learn from. Each image's nuisance is seeded by (seed, sample index, variant), so it does
not depend on which digits or split are chosen.

Needs scikit-learn and Pillow (the `trainer` / `trainer-cpu` extras); they are imported only when used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DigitsSummary:
    """What `write_digits` wrote: image counts per split and class, and where."""

    out_dir: str
    size: int
    seed: int
    classes: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    nuisance: bool = False
    variants: int = 1

    def total(self, split: str) -> int:
        """Images written to one split."""
        return sum(self.counts.get(split, {}).values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with per-split totals for quick reading."""
        return {
            "outDir": self.out_dir,
            "size": self.size,
            "seed": self.seed,
            "classes": self.classes,
            "nuisance": self.nuisance,
            "variants": self.variants,
            "counts": self.counts,
            "totals": {split: self.total(split) for split in SPLITS},
        }


def parse_digit_range(text: str) -> list[int]:
    """Parse `0-4`, `5,7,9`, `0-2,8` or `7` into sorted distinct digits.

    Raises ValueError with the offending part, since this parses command-line input.
    """
    digits: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"empty element in digit range {text!r}")
        low_text, sep, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise ValueError(f"{part!r} is not a digit or a range like 0-4") from None
        if not (0 <= low <= 9 and 0 <= high <= 9) or low > high:
            raise ValueError(f"{part!r} is not a range of digits 0-9 in increasing order")
        digits.update(range(low, high + 1))
    return sorted(digits)


def split_counts(n: int, split: Sequence[float]) -> tuple[int, int, int]:
    """How many of `n` images of one class go to train, val and test.

    Rounded per class (stratified); test takes the remainder so nothing is lost, and every split gets at
    least one image when `n` allows, because the trainer rejects a class missing from val or test.
    """
    if len(split) != 3 or any(f < 0 for f in split) or sum(split) <= 0:
        raise ValueError(f"split must be three non-negative fractions, got {tuple(split)}")
    total = float(sum(split))
    n_train = round(n * split[0] / total)
    n_val = round(n * split[1] / total)
    if n >= 3:
        n_train = min(max(n_train, 1), n - 2)
        n_val = min(max(n_val, 1), n - n_train - 1)
    n_test = n - n_train - n_val
    return n_train, n_val, n_test


#: Nuisance settings: the digit's side as a fraction of the canvas, its rotation in degrees either way,
#: stray strokes per image, the noise's standard deviation and the least ink-background difference in
#: grey levels. Tuned so that a small CNN pretrained on rendered digits 0-4 still reads them (validation
#: accuracy above 0.9) while one trained from scratch on 50 images of 5-9 stays near chance.
NUISANCE_SCALE = (0.6, 0.9)
NUISANCE_ROTATION = 10.0
NUISANCE_MAX_STROKES = 2
NUISANCE_NOISE = 6.0
NUISANCE_MIN_CONTRAST = 67


def render_clean(scan: np.ndarray, size: int) -> np.ndarray:
    """One 8x8 scan (values 0-16) as a `size` x `size` x 3 uint8 image: bright ink on black, upscaled."""
    import numpy as np
    from PIL import Image

    pixels = np.clip(scan * (255.0 / 16.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image.convert("RGB"))


def render_with_nuisance(scan: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 scan as a `size` x `size` x 3 uint8 image with the nuisance the module docstring lists.

    The scan becomes the alpha mask of the ink: scaled, rotated, placed anywhere it fits, and blended
    over a background of one random grey crossed by stray strokes of other greys.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    low, high = NUISANCE_SCALE
    side = int(rng.integers(int(low * size), int(high * size) + 1))
    ink = np.clip(scan * (255.0 / 16.0), 0, 255).astype(np.uint8)
    mask = Image.fromarray(ink, mode="L").resize((side, side), Image.Resampling.BILINEAR)
    angle = float(rng.uniform(-NUISANCE_ROTATION, NUISANCE_ROTATION))
    mask = mask.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    if max(mask.size) > size:
        mask = mask.resize((min(mask.width, size), min(mask.height, size)), Image.Resampling.BILINEAR)
    background = int(rng.integers(0, 256))
    canvas = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, NUISANCE_MAX_STROKES + 1))):
        ends = [(int(x), int(y)) for x, y in rng.integers(0, size, (2, 2))]
        draw.line(ends, fill=int(rng.integers(0, 256)), width=int(rng.integers(1, 3)))
    levels = np.arange(256)
    ink_level = int(rng.choice(levels[np.abs(levels - background) >= NUISANCE_MIN_CONTRAST]))
    alpha = np.zeros((size, size), np.float32)
    left = int(rng.integers(0, size - mask.width + 1))
    top = int(rng.integers(0, size - mask.height + 1))
    alpha[top : top + mask.height, left : left + mask.width] = np.asarray(mask, np.float32) / 255.0
    grey = np.asarray(canvas, np.float32) * (1.0 - alpha) + ink_level * alpha
    rgb = np.repeat(grey[..., None], 3, axis=-1) + rng.normal(0.0, NUISANCE_NOISE, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_digits(
    out_dir: str | Path,
    digits: Iterable[int] = range(10),
    size: int = 32,
    seed: int = 0,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    nuisance: bool = False,
    variants: int = 1,
) -> DigitsSummary:
    """Write scikit-learn's digits as `size` x `size` RGB PNGs in `out_dir/{train,val,test}/<digit>/`.

    Clean, ink is bright on a dark background (like MNIST); the 8x8 scans are upscaled bilinearly so
    that networks with a minimum input size (32 for the Keras applications) can read them. With
    `nuisance`, see the module docstring; `variants` > 1 (nuisance only: clean copies would be
    identical) writes each training image that many times, as `<index>-<variant>.png` after the first.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    chosen = sorted(set(digits))
    if not chosen or any(not 0 <= d <= 9 for d in chosen):
        raise ValueError(f"digits must be a non-empty set of 0-9, got {chosen}")
    if not 8 <= size <= 1024:
        raise ValueError(f"size must be between 8 and 1024, got {size}")
    if variants < 1 or (variants > 1 and not nuisance):
        raise ValueError(f"variants must be 1, or more with nuisance (got {variants})")
    bunch = load_digits()
    images = np.asarray(bunch.images)
    targets = np.asarray(bunch.target)
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for digit in chosen:
        indices = np.flatnonzero(targets == digit)
        rng.shuffle(indices)
        n_train, n_val, _ = split_counts(len(indices), split)
        parts = {
            "train": indices[:n_train],
            "val": indices[n_train : n_train + n_val],
            "test": indices[n_train + n_val :],
        }
        for split_name, split_indices in parts.items():
            folder = root / split_name / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            renderings = variants if split_name == "train" else 1
            for index in split_indices:
                for variant in range(renderings):
                    if nuisance:
                        pixels = render_with_nuisance(
                            images[index], size, np.random.default_rng([seed, int(index), variant])
                        )
                    else:
                        pixels = render_clean(images[index], size)
                    name = f"{int(index):04d}.png" if variant == 0 else f"{int(index):04d}-{variant}.png"
                    Image.fromarray(pixels, mode="RGB").save(folder / name)
            counts[split_name][str(digit)] = len(split_indices) * renderings
    return DigitsSummary(
        str(root), size, seed, [str(d) for d in chosen], counts, nuisance=nuisance, variants=variants
    )


def _parse_split(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("--split takes three fractions, e.g. 0.7,0.15,0.15")
    return parts[0], parts[1], parts[2]


def _digit_range_arg(text: str) -> list[int]:
    try:
        return parse_digit_range(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser(prog: str = "python -m transferjob.datasets") -> argparse.ArgumentParser:
    """The `datasets` command line; the `tj datasets` CLI reuses it."""
    parser = argparse.ArgumentParser(prog=prog, description="Write demo image datasets to disk.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    digits = sub.add_parser("digits", help="scikit-learn's handwritten digits as PNGs (train/val/test)")
    digits.add_argument("out", help="output folder")
    digits.add_argument("--digits", type=_digit_range_arg, default=list(range(10)), help="e.g. 0-4 or 5,7")
    digits.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    digits.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    digits.add_argument("--split", type=_parse_split, default=(0.7, 0.15, 0.15), help="train,val,test")
    digits.add_argument(
        "--nuisance",
        action="store_true",
        help="random size, position, rotation, grey levels, stray strokes and noise (seeded)",
    )
    digits.add_argument(
        "--variants", type=int, default=1, help="renderings of each training image (with --nuisance)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write a dataset and print its summary as JSON; 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    try:
        summary = write_digits(
            args.out,
            args.digits,
            size=args.size,
            seed=args.seed,
            split=args.split,
            nuisance=args.nuisance,
            variants=args.variants,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
