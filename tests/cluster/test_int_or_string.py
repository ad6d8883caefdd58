"""`model.fineTuneAt` is an int-or-string to the real API server: published so, and validated so.

`kubectl explain` reads the published OpenAPI v3 schema; `kubectl apply` is validated by the structural
schema. Both must say "a layer name or an index", never "an object".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.unit.test_models import minimal_spec
from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.kube import wait_until_served

CRD = Path("manifests/crd/transferjob.io_transferjobs.yaml")


@pytest.fixture(scope="module")
def custom(repo_root: Path, api_client: client.ApiClient, apply_yaml: Callable[..., Any]) -> Iterator[Any]:
    apply_yaml(repo_root / CRD)
    wait_until_served(api_client, GROUP, VERSION, PLURAL, "default")
    yield client.CustomObjectsApi(api_client)


def _dry_run_create(custom: Any, fine_tune_at: Any) -> str | None:
    """Dry-run create, strict as `kubectl apply`, a fine-tuning job with this fineTuneAt: error or None."""
    spec = minimal_spec(mode="FineTuning", model={"base": "/models/src.keras", "fineTuneAt": fine_tune_at})
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TransferJob",
        "metadata": {"name": f"fta-{uuid.uuid4().hex[:8]}"},
        "spec": spec,
    }
    try:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, body, dry_run="All", field_validation="Strict"
        )
    except client.ApiException as error:
        assert error.status in (400, 422), error.body  # 400: strict decoding, 422: schema
        return str(json.loads(error.body)["message"])
    return None


def test_published_schema_and_kubectl_explain_say_int_or_string(
    custom: Any, kubectl: Callable[..., Any]
) -> None:
    del custom  # only needed for the CRD to be served
    document = json.loads(kubectl("get", "--raw", f"/openapi/v3/apis/{GROUP}/{VERSION}").stdout)
    kind = f"{'.'.join(reversed(GROUP.split('.')))}.{VERSION}.TransferJob"
    model = document["components"]["schemas"][kind]["properties"]["spec"]["properties"]["model"]
    node = model["properties"]["fineTuneAt"]
    assert node.get("x-kubernetes-int-or-string") is True, node
    assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], node
    assert "type" not in node and "properties" not in node, node
    # kubectl's type column says <Object> for every CRD int-or-string (kubernetes/kubernetes#130946):
    # the description is what tells the reader.
    explained = kubectl("explain", "transferjob.spec.model.fineTuneAt").stdout
    assert "Integer or string." in explained, explained


@pytest.mark.parametrize("value", [100, "block_13_expand"])
def test_layer_index_and_layer_name_are_admitted(custom: Any, value: Any) -> None:
    assert _dry_run_create(custom, value) is None


@pytest.mark.parametrize("value", [1.5, ["block_13_expand"], {"name": "block_13_expand"}, True])
def test_other_types_are_rejected_naming_the_field(custom: Any, value: Any) -> None:
    message = _dry_run_create(custom, value)
    assert message is not None, f"the API server accepted fineTuneAt={value!r}"
    assert "fineTuneAt" in message, message
