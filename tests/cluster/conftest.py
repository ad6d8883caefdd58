"""Fixtures for the admission tests: the CRD on the real API server, and a dry-run create."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.admission import DryRun, create_transferjob
from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.kube import wait_until_served

CRD = Path("manifests/crd/transferjob.io_transferjobs.yaml")


@pytest.fixture(scope="session")
def crd_namespace(repo_root: Path, api_client: client.ApiClient, apply_yaml: Any) -> Iterator[str]:
    """The generated CRD applied, served, and a namespace to create TransferJobs in."""
    apply_yaml(repo_root / CRD)
    core = client.CoreV1Api(api_client)
    namespace = f"admission-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_until_served(api_client, GROUP, VERSION, PLURAL, namespace)
    yield namespace
    core.delete_namespace(namespace)


@pytest.fixture(scope="session")
def dry_run(api_client: client.ApiClient, crd_namespace: str) -> DryRun:
    """Ask the API server whether it would admit a spec, without storing anything."""
    custom = client.CustomObjectsApi(api_client)
    return lambda spec: create_transferjob(custom, crd_namespace, "dry-run", spec, dry_run=True)
