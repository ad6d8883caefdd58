"""A real S3-compatible server (versitygw over a temporary folder) on loopback, for the whole session.

Tests that talk to it get its credentials and endpoint the way the trainer does in a pod: as the
standard environment variables (`s3_env`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The trainer tests' fixtures (the digits, the pretrained source network, the trainer runner), for the
# trainer runs against the store here.
from tests.trainer.conftest import digits, run_trainer, source_models  # noqa: F401
from transferjob_testing.s3server import S3Server, serve


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with serve(tmp_path_factory.mktemp("versitygw") / "root") as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server's credentials and endpoint in this process's environment (the trainer's `fs` reads it)."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3
