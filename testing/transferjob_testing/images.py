"""The project's container images, built here from our own Dockerfiles with buildah (test support).

A real node runs pods from images, and no registry is reachable from these machines but the package
indexes: there is no `tensorflow/tensorflow` or `python` image to pull. So the bases are made here:

* ``base-python``: ``debootstrap --variant=minbase bookworm`` with ``python3``, ``python3-pip`` and
  ``python-is-python3``, trimmed (apt lists and caches, docs, man pages, translations). It stands in for
  ``python:3.11-slim`` (Debian bookworm's Python is 3.11 too).
* ``base-tensorflow``: ``base-python`` plus ``tensorflow-cpu`` of the version the trainer's Dockerfile
  pins for its GPU base, from the package index. It stands in for ``tensorflow/tensorflow:<v>-gpu``.

and the images the cluster runs are built from the repository's Dockerfiles with ``--build-arg
BASE_IMAGE=<local base>``, exactly as a platform team would build them on the real bases:

* ``trainer`` (``trainer_image/Dockerfile`` on ``base-tensorflow``) and ``operator``
  (``operator/Dockerfile`` on ``base-python``);
* ``pause``: the sandbox image, Kubernetes' own ``build/pause/linux/pause.c`` (from the Go module pinned
  in ``hack/k8s/go.mod``) compiled statically, on an empty image, as upstream builds it.

Every image is tagged with a hash of everything it is made from (``localhost/transferjob/<name>:<hash>``):
the Dockerfile, every file its COPY lines read, the base's tag, the recipe of a base. So an unchanged
input costs nothing (the hashes are computed from the files, nothing is built or asked of buildah), and a
change rebuilds only the images that read it; buildah's layer cache (``--layers``) reuses every layer
before the first changed instruction, so a trainer change does not reinstall the trainer's dependencies.

The build context of a Dockerfile is a staging folder holding exactly the hashed files (no
``__pycache__``, no ``*.egg-info``): what is hashed is what is built. Downloads go through the host's CA
bundle and ``/etc/pip.conf``, mounted read-only for the build steps only; the base carries empty files
at the mount points that builds need (``/etc/pip.conf``, ``/etc/hosts``, ...), so no image layer records
a mount point, and no image contains the build host's settings.

Where things live (outside the repository, like the Go builds of ``hack/k8s/build.sh``):
``${XDG_CACHE_HOME:-~/.cache}/transferjob/buildah`` is the buildah storage (its own ``--root``, apart from
any other buildah or podman on the machine) and ``.../transferjob/images`` holds the OCI archives
(``<name>-<hash>.tar``, zstd layers, the newest few of each image) that :func:`import_images` hands to
containerd, and the build logs. Builds take a file lock there, so two processes (or two checkouts, which
share the cache) never build at once.

Building needs root and ``buildah``, ``debootstrap``, ``runc``, ``gcc`` and ``go``; importing needs
``ctr`` (containerd). ``python -m transferjob_testing.images build [--print-refs]`` builds what is
missing; ``... import --address SOCKET`` also imports the images into a containerd.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINER_DOCKERFILE = REPO_ROOT / "trainer_image" / "Dockerfile"
OPERATOR_DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
#: Where `go mod download` is asked for the Kubernetes module (its go.mod pins the version).
K8S_GO_MODULE_DIR = REPO_ROOT / "hack" / "k8s"

REGISTRY = "localhost/transferjob"
#: This module's name for `python -m` (``__name__`` is ``__main__`` there).
MODULE = "transferjob_testing.images"

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_PIP_CONF = Path("/etc/pip.conf")

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PYTHON_PACKAGES = ("python3", "python3-pip", "python-is-python3")
#: Folders whose contents the python base drops: nothing at run time reads them.
TRIMMED = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
#: Files the python base holds empty: the build runtime mounts over them (name resolution, the host's pip
#: settings). Present and empty in the base, they never land, as new files, in a later layer; debootstrap
#: copies the build host's resolv.conf and hostname, which no image should carry.
MOUNT_POINTS = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/pip.conf")
#: Debian marks its Python "externally managed", which makes `pip install` as root fail; the bases
#: stand in for images (python, tensorflow) where it works, and so do the Dockerfiles that use them.
EXTERNALLY_MANAGED = "usr/lib/python3*/EXTERNALLY-MANAGED"
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: Bump when the steps of a base change in a way the constants above do not show.
BASE_RECIPE = 1

#: Archives kept per image (each trainer archive is about 370 MB).
KEPT_ARCHIVES = 3

PAUSE_CFLAGS = ("-Os", "-Wall", "-Werror", "-static")
#: The user upstream's pause image runs as.
PAUSE_USER = "65535:65535"

#: Files of a COPY'd folder that are never build inputs (the Python bytecode and metadata of local runs).
_IGNORED_DIRS = ("__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache")
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


class ImageBuildError(RuntimeError):
    """A build step failed or a tool is missing; the message says which, with the tail of its log."""


@dataclass(frozen=True)
class BuiltImage:
    """An image the cluster runs: its reference and the OCI archive containerd imports."""

    name: str
    ref: str
    archive: Path


@dataclass(frozen=True)
class ProjectImages:
    """The three images a real node needs: the trainer, the operator and the sandbox (pause) image."""

    trainer: BuiltImage
    operator: BuiltImage
    pause: BuiltImage

    def all(self) -> tuple[BuiltImage, ...]:
        return (self.trainer, self.operator, self.pause)

    def refs(self) -> dict[str, str]:
        return {image.name: image.ref for image in self.all()}


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/transferjob``, where the Go builds are cached too."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transferjob"


def archive_dir() -> Path:
    return cache_root() / "images"


def archive_path(ref: str) -> Path:
    """The archive of an image built here: ``<name>-<tag>.tar`` for ``localhost/transferjob/<name>:<tag>``."""
    repository, _, tag = ref.rpartition(":")
    prefix = REGISTRY + "/"
    if not repository.startswith(prefix) or not tag:
        raise ValueError(f"{ref} is not an image built by {MODULE} ({prefix}<name>:<tag>)")
    return archive_dir() / f"{repository[len(prefix) :]}-{tag}.tar"


def buildah(*args: str) -> list[str]:
    """A buildah command line on this module's own storage (every call must use the same one)."""
    storage = cache_root() / "buildah"
    return [
        "buildah",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        "--storage-driver",
        "overlay",
        *args,
    ]


# ---------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class _Recipe:
    """How to make one image, and the hash of what it is made from (its tag)."""

    name: str
    inputs: str
    build: Callable[[_Builder, str], None]
    #: What the build does, in a few words, for the progress lines.
    describe: str
    base: _Recipe | None = None
    #: Whether containerd imports it (the bases are only built upon).
    exported: bool = True

    @property
    def ref(self) -> str:
        return f"{REGISTRY}/{self.name}:{self.inputs}"


def _digest(*parts: object) -> str:
    """A short hex digest of JSON-able parts: the tag of an image made from them."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def tensorflow_version() -> str:
    """The TensorFlow of the trainer's production base (`ARG BASE_IMAGE=tensorflow/tensorflow:<v>-gpu`).

    The CPU stand-in takes the same version, so the trainer is tested on the TensorFlow it ships with.
    """
    found = re.search(
        r"^ARG BASE_IMAGE=tensorflow/tensorflow:(?P<version>[0-9][0-9.]*)-gpu\s*$",
        TRAINER_DOCKERFILE.read_text(),
        re.MULTILINE,
    )
    if found is None:
        raise ImageBuildError(f"{TRAINER_DOCKERFILE}: no `ARG BASE_IMAGE=tensorflow/tensorflow:<v>-gpu` line")
    return found["version"]


def copy_sources(dockerfile: Path) -> list[str]:
    """The context paths a Dockerfile's COPY and ADD instructions read: with it, the build's inputs."""
    sources: list[str] = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words) or args[0].startswith("[") or len(args) < 2:
            # Another stage's files, or the JSON form: not worth parsing until a Dockerfile needs them.
            raise ImageBuildError(f"{dockerfile}: {line.strip()!r} is not a COPY this module can hash")
        sources += [a.rstrip("/") for a in args[:-1]]
    return sources


def context_files(dockerfile: Path) -> list[Path]:
    """Every file a Dockerfile's build reads, relative to the repository root, the Dockerfile first."""
    files = [dockerfile.relative_to(REPO_ROOT)]
    for source in copy_sources(dockerfile):
        path = REPO_ROOT / source
        if path.is_file():
            files.append(path.relative_to(REPO_ROOT))
        elif path.is_dir():
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(
                    d for d in dirs if d not in _IGNORED_DIRS and not d.endswith(_IGNORED_SUFFIXES)
                )
                for name in sorted(names):
                    if not name.endswith(_IGNORED_SUFFIXES):
                        files.append((Path(folder) / name).relative_to(REPO_ROOT))
        else:
            raise ImageBuildError(f"{dockerfile}: COPY source {source} does not exist in {REPO_ROOT}")
    return list(dict.fromkeys(files))  # a Dockerfile inside a COPY'd folder is listed once


def _files_digest(files: Sequence[Path]) -> list[tuple[str, bool, str]]:
    """Path, executable bit and content hash of each file: what a COPY carries into the image."""
    out = []
    for rel in files:
        path = REPO_ROOT / rel
        out.append((str(rel), os.access(path, os.X_OK), hashlib.sha256(path.read_bytes()).hexdigest()))
    return out


def pause_source() -> Path:
    """Kubernetes' ``build/pause/linux/pause.c``, from the module hack/k8s/go.mod pins (Go's module cache)."""
    if shutil.which("go") is None:
        raise ImageBuildError("`go` is needed to find Kubernetes' pause.c (the module pinned in hack/k8s)")
    proc = subprocess.run(
        ["go", "mod", "download", "-json", "k8s.io/kubernetes"],
        cwd=K8S_GO_MODULE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageBuildError(f"go mod download k8s.io/kubernetes failed:\n{proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"]) / "build" / "pause" / "linux" / "pause.c"


def python_base_recipe() -> _Recipe:
    parts = (BASE_RECIPE, DEBIAN_SUITE, DEBIAN_MIRROR, PYTHON_PACKAGES, TRIMMED, MOUNT_POINTS, BASE_ENV)
    return _Recipe(
        "base-python",
        _digest(*parts, EXTERNALLY_MANAGED),
        _Builder.python_base,
        f"debootstrap {DEBIAN_SUITE} + {', '.join(PYTHON_PACKAGES)}",
        exported=False,
    )


def tensorflow_base_recipe(python_base: _Recipe) -> _Recipe:
    requirement = f"tensorflow-cpu=={tensorflow_version()}"
    return _Recipe(
        "base-tensorflow",
        _digest(BASE_RECIPE, python_base.ref, requirement),
        lambda builder, ref: builder.pip_base(ref, python_base.ref, requirement),
        f"pip install {requirement}",
        base=python_base,
        exported=False,
    )


def dockerfile_recipe(name: str, dockerfile: Path, base: _Recipe) -> _Recipe:
    files = context_files(dockerfile)
    return _Recipe(
        name,
        _digest(_files_digest(files), base.ref),
        lambda builder, ref: builder.dockerfile(ref, dockerfile, files, base.ref),
        f"{dockerfile.relative_to(REPO_ROOT)} on {base.name}",
        base=base,
    )


def pause_recipe() -> _Recipe:
    source = pause_source()
    return _Recipe(
        "pause",
        _digest(hashlib.sha256(source.read_bytes()).hexdigest(), PAUSE_CFLAGS, PAUSE_USER),
        lambda builder, ref: builder.pause(ref, source),
        f"gcc {' '.join(PAUSE_CFLAGS)} {source}",
    )


# --------------------------------------------------------------------------------------------- building


@dataclass
class _Builder:
    """Runs the build steps, each logged to ``<archive dir>/logs/<image>.log``."""

    progress: TextIO
    log: Path = field(default_factory=lambda: archive_dir() / "logs" / "build.log")

    def run(self, cmd: Sequence[str], capture: bool = False) -> str:
        """Run a step, its output streamed into the log (or returned, with `capture`); a failure raises
        with the log's tail."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            out = subprocess.PIPE if capture else log
            proc = subprocess.run(cmd, stdout=out, stderr=log, text=True, check=False)
        if proc.returncode != 0:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-40:])
            raise ImageBuildError(f"`{shlex.join(cmd)}` failed ({proc.returncode}); {self.log} ends:\n{tail}")
        return (proc.stdout or "").strip()

    @contextlib.contextmanager
    def container(self, image: str) -> Iterator[str]:
        """A working container (``scratch`` or an image in the store), removed whatever happens."""
        name = self.run(buildah("from", "--pull=never", "--quiet", image), capture=True)
        try:
            yield name
        finally:
            self.run(buildah("rm", name))

    def build_mounts(self) -> list[str]:
        """The host's CA bundle and pip settings, read-only, for the steps that download."""
        mounts = [f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        if HOST_PIP_CONF.is_file():
            mounts.append(f"{HOST_PIP_CONF}:{HOST_PIP_CONF}:ro")
        return [arg for mount in mounts for arg in ("--volume", mount)]

    def python_base(self, ref: str) -> None:
        with self.container("scratch") as ctr:
            root = Path(self.run(buildah("mount", ctr), capture=True))
            self.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PYTHON_PACKAGES)}",
                    DEBIAN_SUITE,
                    str(root),
                    DEBIAN_MIRROR,
                ]
            )
            for entry in (e for folder in TRIMMED for e in (root / folder).glob("*")):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            for name in MOUNT_POINTS:
                (root / name).unlink(missing_ok=True)
                (root / name).touch(mode=0o644)
            for marker in root.glob(EXTERNALLY_MANAGED):
                marker.unlink()
            env = [arg for key, value in BASE_ENV.items() for arg in ("--env", f"{key}={value}")]
            self.run(buildah("config", *env, "--cmd", '["python3"]', ctr))
            self.run(buildah("commit", "--quiet", ctr, ref))

    def pip_base(self, ref: str, base: str, requirement: str) -> None:
        with self.container(base) as ctr:
            pip = ["python", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check"]
            self.run(buildah("run", "--network", "host", *self.build_mounts(), ctr, "--", *pip, requirement))
            self.run(buildah("commit", "--quiet", ctr, ref))

    def dockerfile(self, ref: str, dockerfile: Path, files: Sequence[Path], base: str) -> None:
        archive_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="context-", dir=archive_dir()) as tmp:
            context = Path(tmp)
            for rel in files:
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / rel, context / rel)
            self.run(
                buildah(
                    "bud",
                    "--layers",
                    "--pull=never",
                    "--network",
                    "host",
                    *self.build_mounts(),
                    "--build-arg",
                    f"BASE_IMAGE={base}",
                    "--file",
                    str(context / dockerfile.relative_to(REPO_ROOT)),
                    "--tag",
                    ref,
                    str(context),
                )
            )

    def pause(self, ref: str, source: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            self.run(
                ["gcc", *PAUSE_CFLAGS, f"-DVERSION={ref.rpartition(':')[2]}", "-o", str(binary), str(source)]
            )
            with self.container("scratch") as ctr:
                self.run(buildah("copy", ctr, str(binary), "/pause"))
                self.run(buildah("config", "--entrypoint", '["/pause"]', "--user", PAUSE_USER, ctr))
                self.run(buildah("commit", "--quiet", ctr, ref))

    def exists(self, ref: str) -> bool:
        proc = subprocess.run(buildah("inspect", "--type", "image", ref), capture_output=True, check=False)
        return proc.returncode == 0

    def export(self, recipe: _Recipe) -> Path:
        """Write the image's archive (atomically: an archive that exists is complete).

        Of the archives of this image, the ``KEPT_ARCHIVES`` newest stay: checkouts (worktrees) that share
        the cache but differ build different tags, and must not keep deleting each other's archive.
        """
        archive = archive_path(recipe.ref)
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self.run(
            buildah(
                "push",
                "--quiet",
                "--compression-format",
                "zstd",
                recipe.ref,
                f"oci-archive:{partial}:{recipe.ref}",
            )
        )
        partial.rename(archive)
        archives = sorted(archive.parent.glob(f"{recipe.name}-*.tar"), key=lambda a: a.stat().st_mtime)
        for old in archives[:-KEPT_ARCHIVES]:
            old.unlink(missing_ok=True)
        return archive

    def ensure(self, recipe: _Recipe) -> None:
        """Build what is missing: nothing when the archive (or, for a base, the image) already exists."""
        if recipe.exported and archive_path(recipe.ref).is_file():
            return
        if not self.exists(recipe.ref):
            if recipe.base is not None:
                self.ensure(recipe.base)
            self.log = self.log.with_name(f"{recipe.name}.log")
            self.say(f"building {recipe.ref} ({recipe.describe}); log: {self.log}")
            start = time.monotonic()
            recipe.build(self, recipe.ref)
            self.say(f"built {recipe.name} in {time.monotonic() - start:.1f}s")
        if recipe.exported:
            self.log = self.log.with_name(f"{recipe.name}.log")
            start = time.monotonic()
            archive = self.export(recipe)
            size = archive.stat().st_size / 1e6
            self.say(f"exported {recipe.name} in {time.monotonic() - start:.1f}s: {archive} ({size:.1f} MB)")

    def say(self, message: str) -> None:
        print(f"images: {message}", file=self.progress, flush=True)


#: The tools a build runs, and where each comes from.
BUILD_TOOLS = {
    "buildah": "apt-get install buildah",
    "debootstrap": "apt-get install debootstrap",
    "runc": "apt-get install runc",
    "gcc": "apt-get install gcc libc6-dev",
    "go": "Go >= 1.25, as for hack/k8s/build.sh",
}


@contextlib.contextmanager
def _build_lock(progress: TextIO) -> Iterator[None]:
    """One build at a time per cache: two would build the same bases twice, or race on an archive."""
    archive_dir().mkdir(parents=True, exist_ok=True)
    with (archive_dir() / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"images: waiting for another build to finish ({lock.name})", file=progress, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_images(progress: TextIO = sys.stderr) -> ProjectImages:
    """Build (or find, cached) the trainer, operator and pause images and their archives.

    With unchanged inputs this reads the input files and returns: no buildah call, nothing written.
    """
    python_base = python_base_recipe()
    recipes = (
        dockerfile_recipe("trainer", TRAINER_DOCKERFILE, tensorflow_base_recipe(python_base)),
        dockerfile_recipe("operator", OPERATOR_DOCKERFILE, python_base),
        pause_recipe(),
    )
    if not all(archive_path(r.ref).is_file() for r in recipes):
        missing = [f"{tool} ({how})" for tool, how in BUILD_TOOLS.items() if shutil.which(tool) is None]
        if missing:
            raise ImageBuildError(f"building the images needs: {', '.join(missing)}")
        if os.geteuid() != 0:
            raise ImageBuildError("building the images needs root (debootstrap, buildah's overlay storage)")
        builder = _Builder(progress)
        with _build_lock(progress):
            for recipe in recipes:
                builder.ensure(recipe)
    trainer, operator, pause = (BuiltImage(r.name, r.ref, archive_path(r.ref)) for r in recipes)
    return ProjectImages(trainer=trainer, operator=operator, pause=pause)


# ------------------------------------------------------------------------------------------- containerd


def import_images(containerd_address: str, refs: Iterable[str], namespace: str = "k8s.io") -> list[str]:
    """Import built images into a containerd (the kubelet's images are in namespace ``k8s.io``).

    An image the containerd already holds is skipped: a tag is the hash of the image's inputs, so the
    same ref is the same image. Returns the refs imported now.
    """
    ctr = ["ctr", "--address", containerd_address, "--namespace", namespace]
    present = set(_checked([*ctr, "images", "list", "--quiet"]).split())
    imported = []
    for ref in refs:
        if ref in present:
            continue
        archive = archive_path(ref)
        if not archive.is_file():
            raise ImageBuildError(f"{ref}: no archive at {archive}; build it (python -m {MODULE} build)")
        proc = subprocess.run([*ctr, "images", "import", str(archive)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError(f"ctr images import {archive} failed:\n{proc.stdout}{proc.stderr}")
        imported.append(ref)
    return imported


# ---------------------------------------------------------------------------------- running (for tests)


@dataclass(frozen=True)
class Mount:
    """A mount of :func:`run_in_image`: a host file or folder, or a tmpfs when ``source`` is None."""

    target: str
    source: Path | None = None
    read_only: bool = True


def run_in_image(
    ref: str,
    args: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[Mount] = (),
    read_only_root: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run one process in a built image with runc, confined as a restricted pod's container is.

    The root filesystem is read-only unless asked otherwise, no capability is kept, no privilege can be
    gained, the network is a namespace of its own (no interface but a downed loopback), and ``user``
    (``uid:gid``, numeric; default the image's) runs ``args`` as given, without the entrypoint, in the
    image's working directory with the image's environment plus ``env``.
    """
    config = image_config(ref)
    uid, _, gid = (user or config.get("User") or "0").partition(":")
    environment = dict(e.split("=", 1) for e in config.get("Env") or [])
    environment.update(env or {})
    ctr = _checked(buildah("from", "--pull=never", "--quiet", ref))
    try:
        with tempfile.TemporaryDirectory(prefix="tj-run-") as tmp:
            bundle = Path(tmp)
            _checked(["runc", "spec", "--bundle", str(bundle)])
            spec = json.loads((bundle / "config.json").read_text())
            spec["root"] = {"path": _checked(buildah("mount", ctr)), "readonly": read_only_root}
            spec["process"].update(
                terminal=False,
                args=list(args),
                cwd=config.get("WorkingDir") or "/",
                env=[f"{key}={value}" for key, value in environment.items()],
                user={"uid": int(uid), "gid": int(gid or uid)},
                capabilities={},
                noNewPrivileges=True,
            )
            spec["mounts"] += [_runc_mount(m) for m in mounts]
            (bundle / "config.json").write_text(json.dumps(spec))
            name = f"tj-image-check-{os.getpid()}-{time.monotonic_ns()}"
            runc = ["runc", "--root", str(bundle / "state"), "run", "--bundle", str(bundle), name]
            return subprocess.run(runc, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        subprocess.run(buildah("rm", ctr), capture_output=True, check=False)


def image_config(ref: str) -> dict[str, Any]:
    """The OCI image configuration (``User``, ``Entrypoint``, ``Env``, ...) of an image in the store."""
    inspected = json.loads(_checked(buildah("inspect", "--type", "image", ref)))
    config: dict[str, Any] = inspected["OCIv1"]["config"]
    return config


def _runc_mount(mount: Mount) -> dict[str, Any]:
    if mount.source is None:  # like an emptyDir: writable by any user
        options = ["nosuid", "nodev", "mode=1777"]
        return {"destination": mount.target, "type": "tmpfs", "source": "tmpfs", "options": options}
    options = ["rbind", "ro" if mount.read_only else "rw"]
    return {"destination": mount.target, "type": "bind", "source": str(mount.source), "options": options}


def _checked(cmd: Sequence[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"`{shlex.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout.strip()


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build what is missing (cached by a hash of the inputs)")
    build.add_argument("--print-refs", action="store_true", help="print the refs as JSON on stdout")
    imp = commands.add_parser("import", help="build what is missing, then import it into a containerd")
    imp.add_argument("--address", required=True, help="containerd's socket")
    imp.add_argument("--namespace", default="k8s.io")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        images = build_images()
        if args.command == "import":
            imported = import_images(args.address, images.refs().values(), args.namespace)
            print(f"images: imported {', '.join(imported) or 'nothing (all present)'}", file=sys.stderr)
    except ImageBuildError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    print(f"images: ready in {time.monotonic() - start:.1f}s", file=sys.stderr)
    if args.command == "build" and args.print_refs:
        print(json.dumps(images.refs(), indent=2))
    else:
        for image in images.all():
            print(f"images: {image.name}: {image.ref} ({image.archive})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
