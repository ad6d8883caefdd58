"""A real S3-compatible server on loopback for the tests: versitygw (Apache-2.0) over a local folder.

versitygw is an S3 gateway written in Go; its `posix` backend serves a folder, each sub-folder a
bucket, with the S3 wire protocol, signatures and error codes of the real thing (MinIO's server would do
too, but it is AGPL). It is built once with `go install` from the Go module proxy, pinned, into a cache
folder outside the repository (`python -m transferjob_testing.s3server build`, which `make versitygw`
runs), and started per test session by `serve`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transferjob_testing.cluster.controlplane import free_port, stop_process

VERSION = "v1.8.0"
MODULE = "github.com/versity/versitygw/cmd/versitygw"
#: Where the binary is kept, one file per version (a version bump builds anew).
BIN_DIR = Path(os.environ.get("TJ_TOOLS_BIN") or Path.home() / ".cache" / "transferjob" / "bin")
STARTUP_TIMEOUT = 30.0


def binary() -> Path:
    return BIN_DIR / f"versitygw-{VERSION}"


def build() -> Path:
    """The pinned versitygw binary, built with `go install` unless it is already there."""
    target = binary()
    if target.exists():
        return target
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BIN_DIR) as gobin:
        subprocess.run(
            ["go", "install", f"{MODULE}@{VERSION}"], check=True, env={**os.environ, "GOBIN": gobin}
        )
        shutil.move(os.path.join(gobin, "versitygw"), target)
    return target


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint, its root user's credentials and the folder its buckets live in."""

    endpoint: str
    access_key: str
    secret_key: str
    root: Path
    region: str = "us-east-1"

    def bucket(self, name: str) -> str:
        """Create a bucket (a folder of the root, for the posix backend) and return its s3:// URI."""
        (self.root / name).mkdir(exist_ok=True)
        return f"s3://{name}"

    def env(self) -> dict[str, str]:
        """The standard environment variables a client needs to use this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
        }


@contextmanager
def serve(
    root: Path, access_key: str = "tj-test-access", secret_key: str = "tj-test-secret"
) -> Iterator[S3Server]:
    """Run versitygw on 127.0.0.1 over `root` until the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root.parent / f"versitygw-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(build()),
                "--access",
                access_key,
                "--secret",
                secret_key,
                "--port",
                f"127.0.0.1:{port}",
                "--quiet",
                "posix",
                str(root),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"versitygw exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"versitygw did not listen on port {port}") from None
                time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}", access_key, secret_key, root)
    finally:
        stop_process(proc, grace=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m transferjob_testing.s3server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["build"], help="build: go install the pinned versitygw (cached)")
    parser.parse_args()
    print(build())


if __name__ == "__main__":
    main()
