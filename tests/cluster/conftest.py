"""Fixtures for the admission tests: the CRDs on the real API server, and a dry-run create."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.admission import DryRun, create_transferjob, create_transfersweep
from transferjob.constants import GROUP, PLURAL, SWEEP_PLURAL, VERSION
from transferjob_testing.cluster.kube import wait_until_served

CRD = Path("manifests/crd/transferjob.io_transferjobs.yaml")
SWEEP_CRD = Path("manifests/crd/transferjob.io_transfersweeps.yaml")


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


@pytest.fixture(scope="session")
def sweep_namespace(
    repo_root: Path, api_client: client.ApiClient, apply_yaml: Any, crd_namespace: str
) -> str:
    """The generated TransferSweep CRD applied and served too, in the admission namespace."""
    apply_yaml(repo_root / SWEEP_CRD)
    wait_until_served(api_client, GROUP, VERSION, SWEEP_PLURAL, crd_namespace)
    return crd_namespace


@pytest.fixture(scope="session")
def sweep_dry_run(api_client: client.ApiClient, sweep_namespace: str) -> DryRun:
    """Ask the API server whether it would admit a TransferSweep spec, without storing anything."""
    custom = client.CustomObjectsApi(api_client)
    return lambda spec: create_transfersweep(custom, sweep_namespace, "dry-run", spec, dry_run=True)
