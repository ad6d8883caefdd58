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
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from transferjob.models import DataSpec
from transferjob_trainer import fs
from transferjob_trainer.errors import InvalidDataError

#: What `keras.utils.image_dataset_from_directory` reads; other files are ignored, as there.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
#: Formats `tf.io.decode_image` decodes (Pillow's names).
DECODABLE_FORMATS = {"BMP", "GIF", "JPEG", "PNG", "MPO"}
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
    """The classes (label order) and the three splits."""

    root: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def all_files(self) -> list[str]:
        return [*self.train.files, *self.val.files, *self.test.files]

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
    splits = [
        scan_split(root, split, folder, classes, strict)
        for split, folder in (("train", data.train_dir), ("val", data.val_dir), ("test", data.test_dir))
    ]
    return Layout(root, tuple(classes), *splits)


def image_problem(data: bytes) -> str | None:
    """Why these bytes are not an image TensorFlow can decode, or None when they are.

    Pillow identifies the format from the header and `verify()` walks the file's structure (for PNG
    every chunk's CRC), without decoding pixels; truncated or garbage files fail here.
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
        return f"{fmt} images cannot be decoded (use PNG, JPEG, GIF or BMP)"
    return None


def _check_one(path: str) -> tuple[str, str | None]:
    try:
        return path, image_problem(fs.read_bytes(path))
    except OSError as error:
        return path, f"unreadable: {error}"


def check_images(paths: Iterable[str], workers: int = 8) -> None:
    """Raise InvalidDataError listing the files that are not decodable images."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bad = [(p, why) for p, why in pool.map(_check_one, paths) if why is not None]
    if bad:
        listed = "; ".join(f"{p}: {why}" for p, why in bad[:MAX_LISTED])
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise InvalidDataError(f"{len(bad)} corrupt or undecodable image file(s): {listed}{more}")
