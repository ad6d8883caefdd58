"""Files at local paths or at URIs tf.io.gfile can read (gs://, s3://, hdfs://), behind one interface.

Local paths use the standard library, so listing and checking data (which happens before TensorFlow is
imported) stays fast; other schemes go through tf.io.gfile. `file://` URIs are plain local paths.
Writes are atomic where the filesystem allows (temporary file + rename), because a trainer can be
SIGKILLed at any moment and its checkpoints must never be half-written.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def local_path(uri: str) -> str | None:
    """The local path a location names, or None for remote schemes."""
    if uri.startswith("file://"):
        return uri[len("file://") :] or "/"
    if "://" in uri:
        return None
    return uri


def normalize(uri: str) -> str:
    """`file://` stripped, so local paths are plain paths everywhere else."""
    path = local_path(uri)
    return path if path is not None else uri


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


def join(base: str, *parts: str) -> str:
    """Join with '/', which both local paths and URIs use."""
    return posixpath.join(base, *parts)


def is_local(uri: str) -> bool:
    return local_path(uri) is not None


def isdir(uri: str) -> bool:
    path = local_path(uri)
    return os.path.isdir(path) if path is not None else bool(_gfile().isdir(uri))


def exists(uri: str) -> bool:
    path = local_path(uri)
    return os.path.exists(path) if path is not None else bool(_gfile().exists(uri))


def listdir(uri: str) -> list[str]:
    """Entry names (not paths), sorted; gfile's trailing '/' on folders removed."""
    path = local_path(uri)
    names = os.listdir(path) if path is not None else _gfile().listdir(uri)
    return sorted(n.rstrip("/") for n in names)


def walk_files(uri: str) -> Iterator[str]:
    """Every file under a folder, recursively, sorted per folder (the Keras directory-loader order)."""
    path = local_path(uri)
    if path is not None:
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs.sort()
            for name in sorted(files):
                yield os.path.join(root, name)
        return
    for root, dirs, files in _gfile().walk(uri):
        dirs.sort()
        for name in sorted(files):
            yield join(root, name)


def read_bytes(uri: str, limit: int | None = None) -> bytes:
    path = local_path(uri)
    if path is not None:
        with open(path, "rb") as handle:
            return handle.read() if limit is None else handle.read(limit)
    with _gfile().GFile(uri, "rb") as handle:
        return handle.read() if limit is None else handle.read(limit)


def makedirs(uri: str) -> None:
    path = local_path(uri)
    if path is not None:
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(uri)


def remove(uri: str) -> None:
    """Remove a file or a folder tree; missing is fine."""
    path = local_path(uri)
    if path is not None:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        return
    gfile = _gfile()
    if gfile.isdir(uri):
        gfile.rmtree(uri)
    elif gfile.exists(uri):
        gfile.remove(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers see the old file or the new one, never a torn one."""
    path = local_path(uri)
    if path is None:
        with _gfile().GFile(uri, "wb") as handle:
            handle.write(data)
        return
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


@contextmanager
def local_file_for_write(uri: str, suffix: str) -> Iterator[str]:
    """A local temporary path to write (e.g. with Keras), moved into place atomically on success."""
    path = local_path(uri)
    folder = os.path.dirname(path) if path is not None else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder or None, suffix=suffix, prefix=".tmp-")
    os.close(fd)
    os.remove(tmp)  # Keras refuses some existing targets; it creates the file itself
    try:
        yield tmp
        if path is not None:
            os.replace(tmp, path)
        else:
            _gfile().copy(tmp, uri, overwrite=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def local_copy_for_read(uri: str) -> Iterator[str]:
    """A local path holding the file's content (the file itself when it is local)."""
    path = local_path(uri)
    if path is not None:
        yield path
        return
    suffix = os.path.splitext(uri)[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        _gfile().copy(uri, tmp, overwrite=True)
        yield tmp
    finally:
        os.remove(tmp)


def copy_tree(local_dir: str, dest: str) -> None:
    """Copy a local folder to a destination (used for the SavedModel export to remote outputs)."""
    path = local_path(dest)
    if path is not None:
        if os.path.exists(path):
            shutil.rmtree(path)
        shutil.copytree(local_dir, path)
        return
    gfile = _gfile()
    for root, _dirs, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        target = dest if rel == "." else join(dest, rel.replace(os.sep, "/"))
        gfile.makedirs(target)
        for name in files:
            gfile.copy(os.path.join(root, name), join(target, name), overwrite=True)
