"""Files at local paths or in object stores (s3://, gs://, https://), behind one interface.

Local paths use the standard library, so listing and checking data (which happens before TensorFlow is
imported) stays fast. Object stores go through obstore, the Python binding of the Rust `object_store`
crate (Apache Arrow's, also under Polars, DataFusion and Zarr): one small library, no botocore and no
TensorFlow filesystem plugin, for AWS S3 and every S3-compatible store (MinIO, Ceph RGW, versitygw),
Google Cloud Storage and plain HTTPS reads. It is configured the way every cloud tool is, by the
standard environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL, AWS_REGION; GOOGLE_SERVICE_ACCOUNT_KEY, GOOGLE_APPLICATION_CREDENTIALS), which the
operator fills from the Secret that `spec.storage.secretName` names. `file://` URIs are plain local paths.

Every failure of a remote operation surfaces as a `StorageError` naming the URI and the reason a user
acts on: not found, access denied, or the endpoint that could not be reached.

Writes are atomic: locally through a temporary file and a rename, in an object store because an object
appears whole or not at all. A trainer can be SIGKILLed at any moment and its checkpoints must never be
half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import GCSStore, HTTPStore, S3Store

from transferjob_trainer.errors import StorageError, TrainerError

#: URI schemes of object stores; `https` reads single files (a plain web server cannot list a folder).
REMOTE_SCHEMES = ("s3", "gs", "https")
#: The environment variables that configure the stores; a store is built again when one changes.
_STORE_ENV = re.compile(r"^(AWS|GOOGLE)_")
#: A connection refused or timed out is retried a little (a store restarting, a blip in the network),
#: then reported as an unreachable endpoint instead of hanging for object_store's default 3 minutes.
_RETRY: Any = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
#: How obstore words a request that never reached the store (its errors carry no finer type for it).
_UNREACHABLE = re.compile(r"error sending request|kind: (Connect|Timeout)|dns error|connection refused", re.I)
#: S3 error codes that mean the credentials, whatever HTTP status came with them (versitygw answers an
#: unknown access key with 404 XAdminUserNotFound where AWS answers 403 InvalidAccessKeyId).
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "XAdminUserNotFound",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket"})
#: Parallel downloads when a folder is staged locally.
_DOWNLOAD_THREADS = 16
#: The file in a staged folder that records what was downloaded (object path -> ETag).
STAGED_MANIFEST = ".transferjob-staged.json"


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


def join(base: str, *parts: str) -> str:
    """Join with '/', which both local paths and URIs use."""
    return posixpath.join(base, *parts)


def is_local(uri: str) -> bool:
    return local_path(uri) is not None


# --------------------------------------------------------------------------------------- object stores


def s3_endpoint() -> str | None:
    """The S3 endpoint the environment names (an S3-compatible store), as the AWS tools read it."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass(frozen=True)
class _Remote:
    """An object in a store: the store (one per bucket or host), the key in it, the URI for messages."""

    store: Any
    key: str
    uri: str
    endpoint: str


_stores: dict[tuple[str, ...], tuple[Any, str]] = {}


def _store(scheme: str, netloc: str) -> tuple[Any, str]:
    """The store for a bucket (or an https host) and its endpoint, built once per configuration."""
    env = tuple(f"{k}={v}" for k, v in sorted(os.environ.items()) if _STORE_ENV.match(k))
    cache_key = (scheme, netloc, *env)
    if cache_key not in _stores:
        store: Any
        if scheme == "s3":
            endpoint = s3_endpoint()
            # object_store refuses plain http unless told; an in-cluster MinIO or Ceph often speaks it.
            options: Any = {"allow_http": True} if endpoint and endpoint.startswith("http://") else {}
            config: Any = {"endpoint": endpoint} if endpoint else {}
            store = S3Store(netloc, config=config, client_options=options, retry_config=_RETRY)
            shown = endpoint or "https://s3.amazonaws.com"
        elif scheme == "gs":
            store = GCSStore(netloc, retry_config=_RETRY)
            shown = "https://storage.googleapis.com"
        else:
            shown = f"{scheme}://{netloc}"
            store = HTTPStore.from_url(shown, retry_config=_RETRY)
        _stores[cache_key] = (store, shown)
    return _stores[cache_key]


def _remote(uri: str) -> _Remote:
    parts = urlsplit(uri)
    if parts.scheme not in REMOTE_SCHEMES or not parts.netloc:
        raise StorageError(uri, "unsupported location", f"use one of {', '.join(REMOTE_SCHEMES)} or a path")
    store, endpoint = _store(parts.scheme, parts.netloc)
    return _Remote(store, parts.path.strip("/"), uri, endpoint)


def _s3_code(text: str) -> str:
    """The S3 error code in a response body (`NoSuchBucket`, `SignatureDoesNotMatch`, ...), if any."""
    match = re.search(r"<Code>([A-Za-z]+)</Code>", text)
    return match.group(1) if match else ""


@contextmanager
def _storage_errors(remote: _Remote) -> Iterator[None]:
    """Turn obstore's errors into a `StorageError` naming the URI, or a retryable `TrainerError`.

    The S3 error code decides where there is one: a listing's errors come as obstore's generic error.
    """
    try:
        yield
    except (FileNotFoundError, BaseError) as error:
        text = str(error)
        code = _s3_code(text)
        if code in _DENIED_CODES or isinstance(error, PermissionDeniedError | UnauthenticatedError):
            raise StorageError(remote.uri, "access denied", code) from None
        if code in _NOT_FOUND_CODES or isinstance(error, FileNotFoundError):
            raise StorageError(remote.uri, "not found", code) from None
        if _UNREACHABLE.search(text):
            raise StorageError(remote.uri, f"endpoint {remote.endpoint} unreachable") from None
        first = text.splitlines()[0] if text else type(error).__name__
        raise TrainerError(f"{remote.uri}: {first}") from error


def _prefix(key: str) -> str | None:
    """A key as a listing prefix: object_store lists what lies under `key/`; None for the bucket's root."""
    return key or None


def _list(remote: _Remote) -> list[dict[str, Any]]:
    """Every object under a remote folder."""
    with _storage_errors(remote):
        return [dict(meta) for batch in obstore.list(remote.store, _prefix(remote.key)) for meta in batch]


def _listing(remote: _Remote) -> tuple[list[str], list[str]]:
    """Sub-folder names and object names directly under a remote folder."""
    with _storage_errors(remote):
        result = obstore.list_with_delimiter(remote.store, _prefix(remote.key))
    folders = [posixpath.basename(p.rstrip("/")) for p in result["common_prefixes"]]
    objects = [posixpath.basename(o["path"]) for o in result["objects"]]
    return folders, objects


def _is_object(remote: _Remote) -> bool:
    """Whether an object has exactly this key (not just a prefix of others)."""
    if not remote.key:
        return False
    try:
        with _storage_errors(remote):
            obstore.head(remote.store, remote.key)
        return True
    except StorageError as error:
        if error.problem != "not found":
            raise
        return False


def _relative(remote: _Remote, key: str) -> str:
    return key[len(remote.key) + 1 :] if remote.key else key


# ------------------------------------------------------------------------------------------ operations


def isdir(uri: str) -> bool:
    """A local folder, or a remote prefix with at least one object under it (stores have no folders)."""
    path = local_path(uri)
    if path is not None:
        return os.path.isdir(path)
    folders, objects = _listing(_remote(uri))
    return bool(folders or objects)


def exists(uri: str) -> bool:
    path = local_path(uri)
    if path is not None:
        return os.path.exists(path)
    return _is_object(_remote(uri)) or isdir(uri)


def listdir(uri: str) -> list[str]:
    """Entry names (not paths), sorted."""
    path = local_path(uri)
    if path is not None:
        return sorted(os.listdir(path))
    folders, objects = _listing(_remote(uri))
    return sorted(set(folders) | set(objects))


def _walk_order(relative: str) -> tuple[tuple[int, str], ...]:
    """A sort key giving `os.walk`'s top-down order: a folder's files (sorted), then each sub-folder."""
    *folders, name = relative.split("/")
    return (*((1, f) for f in folders), (0, name))


def walk_files(uri: str) -> Iterator[str]:
    """Every file under a folder, recursively, sorted per folder (the Keras directory-loader order)."""
    path = local_path(uri)
    if path is not None:
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs.sort()
            for name in sorted(files):
                yield os.path.join(root, name)
        return
    remote = _remote(uri)
    relative = sorted((_relative(remote, m["path"]) for m in _list(remote)), key=_walk_order)
    for rel in relative:
        yield join(uri.rstrip("/"), rel)


def read_bytes(uri: str, limit: int | None = None) -> bytes:
    path = local_path(uri)
    if path is not None:
        with open(path, "rb") as handle:
            return handle.read() if limit is None else handle.read(limit)
    remote = _remote(uri)
    with _storage_errors(remote):
        data = bytes(obstore.get(remote.store, remote.key).bytes())
    return data if limit is None else data[:limit]


def makedirs(uri: str) -> None:
    """Create a local folder; object stores have no folders, so remotely there is nothing to do."""
    path = local_path(uri)
    if path is not None:
        os.makedirs(path, exist_ok=True)


def remove(uri: str) -> None:
    """Remove a file or a folder tree; missing is fine."""
    path = local_path(uri)
    if path is not None:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        return
    remote = _remote(uri)
    keys = [m["path"] for m in _list(remote)] + ([remote.key] if _is_object(remote) else [])
    if keys:
        with _storage_errors(remote):
            obstore.delete(remote.store, keys)


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers see the old file or the new one, never a torn one."""
    path = local_path(uri)
    if path is None:
        remote = _remote(uri)
        with _storage_errors(remote):
            obstore.put(remote.store, remote.key, data)
        return
    with _replacing(path) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def _replacing(path: str) -> Iterator[BinaryIO]:
    """A temporary file beside `path` that replaces it when the block ends, and is removed if the block
    fails: readers see the old file or the new one, never a torn one."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def create_bytes(uri: str, data: bytes) -> bool:
    """Write a file only where there is none, in one step no other writer can slip into; False if there
    was one. Of two trainers claiming one output location at the same moment, exactly one gets it.

    Locally the bytes go to a temporary file that is then hard-linked to the name (a link fails on an
    existing name, and the file appears whole); a volume without hard links (some FUSE and SMB ones)
    gets an exclusive create instead. An object store is asked for a conditional put (If-None-Match),
    which AWS S3, Google Cloud Storage and the S3-compatible servers we test against (versitygw) honour.
    """
    path = local_path(uri)
    if path is None:
        remote = _remote(uri)
        with _storage_errors(remote):
            try:
                obstore.put(remote.store, remote.key, data, mode="create")
            except AlreadyExistsError:
                return False
        return True
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this volume
            return _create_exclusive(path, data)
        return True
    finally:
        os.remove(tmp)


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def _upload(local_file: str, uri: str) -> None:
    remote = _remote(uri)
    with _storage_errors(remote):
        obstore.put(remote.store, remote.key, Path(local_file))


def _download(remote: _Remote, key: str, local_file: str) -> None:
    """Stream one object into a local file, atomically (a killed download leaves no partial file)."""
    with _replacing(local_file) as handle, _storage_errors(remote):
        for chunk in obstore.get(remote.store, key):
            handle.write(chunk)


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
            _upload(tmp, uri)
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
    remote = _remote(uri)
    folder = tempfile.mkdtemp(prefix="remote-")
    try:
        # The object's own name, suffix included: Keras picks the loader by the file's extension.
        local = os.path.join(folder, posixpath.basename(remote.key) or "object")
        _download(remote, remote.key, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def upload_file(local_file: str, uri: str) -> None:
    """Copy a local file to a location, atomically (a store's object appears whole; locally a rename).

    The feature cache's shards are written on local disk and copied to a remote output as each one is
    finished; the local file stays where it is.
    """
    path = local_path(uri)
    if path is None:
        _upload(local_file, uri)
        return
    with _replacing(path) as handle, open(local_file, "rb") as source:
        shutil.copyfileobj(source, handle)


def download_file(uri: str, local_file: str) -> None:
    """Copy a file at a location to a local path, atomically (a killed copy leaves no partial file)."""
    path = local_path(uri)
    if path is None:
        remote = _remote(uri)
        _download(remote, remote.key, local_file)
        return
    with _replacing(local_file) as handle, open(path, "rb") as source:
        shutil.copyfileobj(source, handle)


def copy_tree(local_dir: str, dest: str) -> None:
    """Copy a local folder to a destination, replacing what was there (SavedModel export, TensorBoard)."""
    path = local_path(dest)
    if path is not None:
        if os.path.exists(path):
            shutil.rmtree(path)
        shutil.copytree(local_dir, path)
        return
    remove(dest)
    put_tree(local_dir, dest)


def put_tree(local_dir: str, dest: str) -> None:
    """Copy a local folder's files into a destination, overwriting files of the same name, keeping others."""
    path = local_path(dest)
    if path is not None:
        shutil.copytree(local_dir, path, dirs_exist_ok=True)
        return
    for root, _dirs, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        target = dest if rel == "." else join(dest, rel.replace(os.sep, "/"))
        for name in files:
            _upload(os.path.join(root, name), join(target, name))


def stage_folder(uri: str, cache_root: str) -> tuple[str, int]:
    """A local copy of a remote folder, for the input pipeline to read as plain files; returns its path.

    Training reads every image many times, in parallel, from tf.data; local files keep that as fast as
    it is for a volume, where streaming every read from the store would not (and TensorFlow itself reads
    no s3://). The copy is kept under `cache_root` in a folder named after the URI: objects whose ETag
    has not changed since the last copy are not downloaded again, and files whose object is gone are
    removed, so the copy is always exactly the folder in the store. Returns the copy's path and how many
    objects were downloaded.
    """
    remote = _remote(uri)
    objects = _list(remote)
    if not objects:
        raise StorageError(uri, "not found", "no objects under this prefix")
    target = os.path.join(cache_root, hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16])
    manifest_path = os.path.join(target, STAGED_MANIFEST)
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            previous: dict[str, str | None] = json.load(handle)
    except (OSError, ValueError):
        previous = {}
    wanted = {_relative(remote, m["path"]): m for m in objects if not m["path"].endswith("/")}
    for root, _dirs, files in os.walk(target):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), target).replace(os.sep, "/")
            if rel != STAGED_MANIFEST and rel not in wanted:
                os.remove(os.path.join(root, name))
    fetch = [
        (m["path"], os.path.join(target, *rel.split("/")))
        for rel, m in wanted.items()
        if m.get("e_tag") is None
        or previous.get(rel) != m["e_tag"]
        or not os.path.exists(os.path.join(target, *rel.split("/")))
    ]

    os.makedirs(target, exist_ok=True)
    with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
        list(pool.map(lambda item: _download(remote, *item), fetch))
    manifest = json.dumps({rel: m.get("e_tag") for rel, m in wanted.items()})
    write_text(manifest_path, manifest)
    return target, len(fetch)
