"""The adversarial corpus (tests/corpus/), at admission and on update, against the SDK and a real API server.

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

from tests.cluster.admission import DryRun, create_transferjob, load_corpus, merged, same_field, sdk_verdict
from transferjob.constants import GROUP, PLURAL, VERSION

#: The good spec every admission case starts from.
BASE_SPEC: dict[str, Any] = {
    "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "flowers"}}},
    "output": {"location": {"pvc": {"claimName": "models"}}},
}


ADMISSION = load_corpus("admission.yaml")
UPDATES = load_corpus("updates.yaml")


@pytest.mark.parametrize("case", ADMISSION, ids=[c["id"] for c in ADMISSION])
def test_admission_case(dry_run: DryRun, case: dict[str, Any]) -> None:
    spec = merged(BASE_SPEC, case["spec"])
    sdk, api = sdk_verdict(spec), dry_run(spec)
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
    custom: Any, namespace: str, name: str, patch: dict[str, Any], subresource: str | None
) -> str | None:
    patch_fn = (
        custom.patch_namespaced_custom_object_status if subresource else custom.patch_namespaced_custom_object
    )
    try:
        patch_fn(GROUP, VERSION, namespace, PLURAL, name, patch, _content_type="application/merge-patch+json")
    except client.ApiException as error:
        assert error.status in (400, 422), error.body
        return str(json.loads(error.body)["message"])
    return None


@pytest.mark.parametrize("case", UPDATES, ids=[c["id"] for c in UPDATES])
def test_update_case(updates: Any, case: dict[str, Any]) -> None:
    custom, namespace = updates
    name = f"upd-{uuid.uuid4().hex[:8]}"
    assert create_transferjob(custom, namespace, name, merged(BASE_SPEC, case.get("create", {}))) is None
    try:
        error = _patch(custom, namespace, name, case["patch"], case.get("subresource"))
        stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
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
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
