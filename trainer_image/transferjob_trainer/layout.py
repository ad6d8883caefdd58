"""Finding and checking the images before any training starts (no TensorFlow needed).

The layout is Keras' `image_dataset_from_directory`: `<root>/<split>/<class>/**/<image>`, files with
the extensions that loader accepts. Every problem a retry cannot fix is found here, up front, and raised
as `InvalidDataError` naming the folder or file: a missing split folder, a class missing from val or test, an
empty class, a file that is not a decodable image. A bad file discovered in epoch 7 of 10 would cost the
whole run; a check of headers and PNG checksums costs about one read of the data.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from transferjob.constants import IMAGE_EXTENSIONS
from transferjob.models import DataSpec
from transferjob_trainer import fs
from transferjob_trainer.errors import InvalidDataError
from transferjob_trainer.report import log

#: Formats `tf.io.decode_image` decodes (Pillow's names; MPO is a JPEG with extra frames).
DECODABLE_FORMATS = {"BMP", "GIF", "JPEG", "PNG", "MPO", "WEBP"}
#: A JPEG ends with this marker; a file cut short (an interrupted copy or download) lacks it, and
#: Pillow's `verify()` does not notice (it reads only the headers of a JPEG).
JPEG_END = b"\xff\xd9"
#: How far from the end the marker may sit (some writers pad, some cameras append data after it).
JPEG_END_WINDOW = 4096
#: How many skipped files a log line or `.status` names.
MAX_NAMED_SKIPPED = 20
#: How many bad files an error message lists before it says "and N more".
MAX_LISTED = 5


@dataclass(frozen=True)
class Split:
    """One split's images and integer labels (index into `Layout.classes`)."""

    name: str
    folder: str
    files: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    def counts(self, n_classes: int) -> list[int]:
        """Images per class."""
        counts = [0] * n_classes
        for label in self.labels:
            counts[label] += 1
        return counts


@dataclass(frozen=True)
class Layout:
    """The classes (label order), the three splits, and the invalid files left out of them (path, why)."""

    root: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def all_files(self) -> list[str]:
        return [*self.train.files, *self.val.files, *self.test.files]

    def without(self, invalid: Sequence[tuple[str, str]]) -> Layout:
        """This layout minus the `invalid` files (path, why); every class keeps an image in every split
        where it had one (a worker's shard may hold no image of a class, or no test split at all)."""
        drop = {path for path, _ in invalid}
        splits = []
        n = len(self.classes)
        for split in (self.train, self.val, self.test):
            kept = [(f, label) for f, label in zip(split.files, split.labels, strict=True) if f not in drop]
            reduced = Split(split.name, split.folder, tuple(f for f, _ in kept), tuple(la for _, la in kept))
            for cls, before, count in zip(self.classes, split.counts(n), reduced.counts(n), strict=True):
                if before and count == 0:
                    raise InvalidDataError(
                        f"class folder {fs.join(split.folder, cls)} has no decodable image left once the "
                        "invalid ones are skipped"
                    )
            splits.append(reduced)
        train, val, test = splits
        return Layout(self.root, self.classes, train, val, test, skipped=(*self.skipped, *invalid))

    def digest(self) -> str:
        """A hash of the file list relative to the root: checkpoints are only reused for the same data."""
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            for path, label in zip(split.files, split.labels, strict=True):
                h.update(f"{split.name}\0{path[len(self.root) :]}\0{label}\n".encode())
        return h.hexdigest()


def _subfolders(folder: str) -> list[str]:
    return [n for n in fs.listdir(folder) if not n.startswith(".") and fs.isdir(fs.join(folder, n))]


def _images_in(folder: str) -> list[str]:
    return [
        p
        for p in fs.walk_files(folder)
        if p.lower().endswith(IMAGE_EXTENSIONS) and not p.rsplit("/", 1)[-1].startswith(".")
    ]


def resolve_classes(
    train_classes: Sequence[str], requested: Sequence[str] | None, train_dir: str
) -> list[str]:
    """Label order: the spec's classNames when given (each must exist in train), else train's sorted."""
    if requested:
        missing = [c for c in requested if c not in train_classes]
        if missing:
            raise InvalidDataError(
                f"class folder(s) {', '.join(missing)} from classNames not found in {train_dir}"
            )
        return list(requested)
    if len(train_classes) < 2:
        raise InvalidDataError(
            f"{train_dir} needs at least 2 class sub-folders, found {len(train_classes)}"
            + (f" ({', '.join(train_classes)})" if train_classes else "")
        )
    return sorted(train_classes)


def scan_split(root: str, name: str, folder_name: str, classes: Sequence[str], strict: bool) -> Split:
    """List one split; every class must be there and hold at least one image.

    `strict` rejects class folders the training set does not have (only when classNames is not given:
    with classNames, other folders are deliberately left out).
    """
    folder = fs.join(root, folder_name)
    if not fs.isdir(folder):
        raise InvalidDataError(f"{name} folder {folder} does not exist")
    present = _subfolders(folder)
    if strict:
        extra = sorted(set(present) - set(classes))
        if extra:
            raise InvalidDataError(
                f"{folder} has class folder(s) {', '.join(extra)} that the training set lacks"
            )
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        class_folder = fs.join(folder, cls)
        if cls not in present:
            raise InvalidDataError(f"class {cls!r} is missing from {name}: no folder {class_folder}")
        images = _images_in(class_folder)
        if not images:
            raise InvalidDataError(
                f"class folder {class_folder} has no images (expected {', '.join(IMAGE_EXTENSIONS)} files)"
            )
        files.extend(images)
        labels.extend([label] * len(images))
    return Split(name, folder, tuple(files), tuple(labels))


def scan_layout(root: str, data: DataSpec) -> Layout:
    """Find classes and images under `root`, or raise InvalidDataError saying what is wrong where."""
    root = fs.normalize(root).rstrip("/") or "/"
    if not fs.isdir(root):
        raise InvalidDataError(f"data folder {root} does not exist")
    train_folder = fs.join(root, data.train_dir)
    if not fs.isdir(train_folder):
        raise InvalidDataError(f"train folder {train_folder} does not exist")
    classes = resolve_classes(_subfolders(train_folder), data.class_names, train_folder)
    strict = data.class_names is None
    train, val, test = (
        scan_split(root, split, folder, classes, strict)
        for split, folder in (("train", data.train_dir), ("val", data.val_dir), ("test", data.test_dir))
    )
    return Layout(root, tuple(classes), train, val, test)


def image_problem(data: bytes) -> str | None:
    """Why these bytes are not an image TensorFlow can decode, or None when they are.

    Pillow identifies the format from the header and `verify()` walks the file's structure (for PNG
    every chunk's CRC), without decoding pixels; truncated or garbage files fail here. A JPEG's
    structure is only checked up to its scan data, so a JPEG must also end with its end marker.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
            image.verify()
    except UnidentifiedImageError:
        return "not an image (unrecognised header)"
    except Exception as error:  # Pillow raises many types for broken files
        return f"corrupt {error.__class__.__name__}: {error}".strip()
    if fmt not in DECODABLE_FORMATS:
        return f"{fmt} images cannot be decoded (use PNG, JPEG, GIF, BMP or WebP)"
    if fmt in ("JPEG", "MPO") and JPEG_END not in data[-JPEG_END_WINDOW:]:
        return "truncated JPEG (no end-of-image marker)"
    return None


def _check_one(path: str) -> tuple[str, str | None]:
    try:
        return path, image_problem(fs.read_bytes(path))
    except OSError as error:
        return path, f"unreadable: {error}"


def invalid_images(
    paths: Iterable[str], workers: int = 8, on_checked: Callable[[int], None] | None = None
) -> list[tuple[str, str]]:
    """(path, why) for each file that is not a decodable image; each file read once, in parallel.

    `on_checked(1)` is called as each file's check completes (in order), for progress reports.
    """
    bad = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, why in pool.map(_check_one, paths):
            if why is not None:
                bad.append((path, why))
            if on_checked is not None:
                on_checked(1)
    return bad


def _listed(bad: Sequence[tuple[str, str]]) -> str:
    listed = "; ".join(f"{p}: {why}" for p, why in bad[:MAX_LISTED])
    more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
    return f"{listed}{more}"


def check_images(
    layout: Layout,
    data: DataSpec,
    on_checked: Callable[[int], None] | None = None,
    files: list[str] | None = None,
) -> Layout:
    """The layout to train on (`skipped` lists the files left out of it), or InvalidDataError.

    Any invalid file fails the job unless `data.skipInvalidImages`; then the invalid files are left out,
    unless they are more than `data.maxInvalidFraction` of all images (a broken copy of the data set,
    not a few bad files) or leave a class of a split without images. `files` (default: all) are the
    ones this run reads: a worker of a group checks only its own shard.
    """
    files = layout.all_files() if files is None else files
    total = len(files)
    bad = invalid_images(files, on_checked=on_checked)
    if not bad:
        return layout
    if not data.skip_invalid_images:
        raise InvalidDataError(f"{len(bad)} corrupt or undecodable image file(s): {_listed(bad)}")
    if len(bad) > data.max_invalid_fraction * total:
        raise InvalidDataError(
            f"{len(bad)} of {total} image files ({len(bad) / total:.1%}) are corrupt or undecodable, more "
            f"than data.maxInvalidFraction ({data.max_invalid_fraction:g}) allows: {_listed(bad)}"
        )
    for path, why in bad[:MAX_NAMED_SKIPPED]:
        log(f"skipping {path}: {why}")
    if len(bad) > MAX_NAMED_SKIPPED:
        log(f"skipping {len(bad) - MAX_NAMED_SKIPPED} more invalid image file(s)")
    return layout.without(bad)
