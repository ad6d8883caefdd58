"""The adversarial corpus (tests/corpus/), at admission and on update, against the SDK and a real API server:
TransferJobs (admission.yaml, updates.yaml) and TransferSweeps (sweeps.yaml, sweep-updates.yaml).

Each case says what a user writes and what that user would expect; see tests/corpus/README.md. A case
that fails here is either a bug (fix the product) or a wrong expectation (fix the case and say why in its
`why`): never delete a case to make the suite pass.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.admission import (
    SWEEP_SPEC,
    DryRun,
    create_transferjob,
    create_transfersweep,
    load_corpus,
    merged,
    same_field,
    sdk_sweep_verdict,
    sdk_verdict,
)
from transferjob.constants import GROUP, PLURAL, SWEEP_PLURAL, VERSION

#: The good spec every admission case starts from.
BASE_SPEC: dict[str, Any] = {
    "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "flowers"}}},
    "output": {"location": {"pvc": {"claimName": "models"}}},
}


ADMISSION = load_corpus("admission.yaml")
UPDATES = load_corpus("updates.yaml")
SWEEPS = load_corpus("sweeps.yaml")
SWEEP_UPDATES = load_corpus("sweep-updates.yaml")


@pytest.mark.parametrize("case", ADMISSION, ids=[c["id"] for c in ADMISSION])
def test_admission_case(dry_run: DryRun, case: dict[str, Any]) -> None:
    spec = merged(BASE_SPEC, case["spec"])
    _check_verdicts(case, spec, sdk_verdict(spec), dry_run(spec))


@pytest.mark.parametrize("case", SWEEPS, ids=[c["id"] for c in SWEEPS])
def test_sweep_admission_case(sweep_dry_run: DryRun, case: dict[str, Any]) -> None:
    spec = merged(SWEEP_SPEC, case["spec"])
    _check_verdicts(case, spec, sdk_sweep_verdict(spec), sweep_dry_run(spec))


def _check_verdicts(case: dict[str, Any], spec: dict[str, Any], sdk: str | None, api: str | None) -> None:
    """Both sides admit, or both reject naming the case's field (and saying its words)."""
    context = f"{case.get('why', '')}\nSDK: {sdk}\nAPI server: {api}\nspec: {json.dumps(spec)}"
    if case["expect"] == "admit":
        assert sdk is None and api is None, context
        return
    assert case["expect"] == "reject", case
    assert sdk is not None and api is not None, context
    field = case["field"]
    assert same_field(field, sdk) and same_field(field, api), f"expected {field} named\n{context}"
    if "says" in case:
        assert case["says"] in sdk and case["says"] in api, context


@pytest.fixture()
def updates(api_client: client.ApiClient, crd_namespace: str) -> Any:
    return client.CustomObjectsApi(api_client), crd_namespace


def _patch(
    custom: Any,
    namespace: str,
    name: str,
    patch: dict[str, Any],
    subresource: str | None,
    plural: str = PLURAL,
) -> str | None:
    patch_fn = (
        custom.patch_namespaced_custom_object_status if subresource else custom.patch_namespaced_custom_object
    )
    try:
        patch_fn(GROUP, VERSION, namespace, plural, name, patch, _content_type="application/merge-patch+json")
    except client.ApiException as error:
        assert error.status in (400, 422), error.body
        return str(json.loads(error.body)["message"])
    return None


@pytest.mark.parametrize("case", UPDATES, ids=[c["id"] for c in UPDATES])
def test_update_case(updates: Any, case: dict[str, Any]) -> None:
    custom, namespace = updates
    name = f"upd-{uuid.uuid4().hex[:8]}"
    assert create_transferjob(custom, namespace, name, merged(BASE_SPEC, case.get("create", {}))) is None
    _check_update(custom, namespace, name, case, PLURAL)


@pytest.mark.parametrize("case", SWEEP_UPDATES, ids=[c["id"] for c in SWEEP_UPDATES])
def test_sweep_update_case(api_client: client.ApiClient, sweep_namespace: str, case: dict[str, Any]) -> None:
    custom = client.CustomObjectsApi(api_client)
    name = f"upd-{uuid.uuid4().hex[:8]}"
    created = create_transfersweep(custom, sweep_namespace, name, merged(SWEEP_SPEC, case.get("create", {})))
    assert created is None, created
    _check_update(custom, sweep_namespace, name, case, SWEEP_PLURAL)


def _check_update(custom: Any, namespace: str, name: str, case: dict[str, Any], plural: str) -> None:
    """Patch the created object as the case says, check the verdict and what was stored, delete it."""
    try:
        error = _patch(custom, namespace, name, case["patch"], case.get("subresource"), plural)
        stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        context = f"{case.get('why', '')}\nAPI server: {error}\nstored: {json.dumps(stored.get('spec'))}"
        if case["expect"] == "admit":
            assert error is None, context
            for path, value in (case.get("stored") or {}).items():
                node: Any = stored
                for key in path.split("."):
                    node = node[key]
                assert value == "<any>" or node == value, f"{path}: {node!r} != {value!r}\n{context}"
        else:
            assert case["expect"] == "reject", case
            assert error is not None, context
            assert case["says"] in error, context
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
