"""Bad TransferJobs are rejected by the real API server at admission, with a message naming the field.

The same bad specs the SDK rejects (tests/unit/test_models.py) are sent to kube-apiserver with the
generated CRD: its schema and CEL rules must catch every one of them, so `kubectl apply` users get the
same protection as SDK users.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.admission import create_transferjob
from tests.unit.test_models import BAD, _set, minimal_spec
from transferjob.constants import GROUP, PLURAL, VERSION

CRD = Path("manifests/crd/transferjob.io_transferjobs.yaml")


@pytest.fixture(scope="module")
def tj_namespace(api_client: client.ApiClient, crd_namespace: str) -> tuple[Any, str]:
    """The CRD applied and one namespace for the whole module (fifty namespaces would be slow)."""
    return client.CustomObjectsApi(api_client), crd_namespace


def _create(custom: Any, namespace: str, name: str, spec: dict[str, Any]) -> str | None:
    return create_transferjob(custom, namespace, name, spec)


@pytest.mark.parametrize(("path", "value", "_sdk_text"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_api_server_rejects_bad_spec_naming_the_field(
    tj_namespace: tuple[Any, str], path: str, value: Any, _sdk_text: str
) -> None:
    custom, namespace = tj_namespace
    message = _create(custom, namespace, f"bad-{uuid.uuid4().hex[:8]}", _set(minimal_spec(), path, value))
    assert message is not None, f"the API server accepted spec.{path}={value!r}"
    leaf = path.split(".")[-1]
    assert leaf in message, message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model": {"fromJob": "fe"}}, "model.fromJob is only allowed with mode FineTuning"),
        ({"model": {"fromModel": "/m.keras"}}, "model.fromModel is only allowed with mode FineTuning"),
        ({"model": {"fineTuneAt": 3}}, "model.fineTuneAt is only allowed with mode FineTuning"),
        (
            {"mode": "FineTuning", "model": {"fromJob": "a", "fromModel": "/m.keras"}},
            "fromJob and fromModel are mutually exclusive",
        ),
        (
            {"model": {"base": "InceptionV3", "imageSize": 64}},
            "imageSize must be at least 75 for InceptionV3",
        ),
        ({"model": {"imageSize": 100}}, "imageSize must be one of [96, 128, 160, 192, 224] for MobileNetV2"),
        (
            {"mode": "FineTuning", "model": {"base": "/m/source.keras"}},
            "model.fineTuneAt is required to fine-tune this base",
        ),
        ({"mode": "FineTuning", "model": {"base": "NASNetMobile"}}, "model.fineTuneAt is required"),
        ({"data": {"source": {"hostPath": "/d"}, "valDir": "train"}}, "three different folders"),
    ],
)
def test_api_server_enforces_cross_field_rules(
    tj_namespace: tuple[Any, str], overrides: dict[str, Any], expected: str
) -> None:
    custom, namespace = tj_namespace
    message = _create(custom, namespace, f"cel-{uuid.uuid4().hex[:8]}", minimal_spec(**overrides))
    assert message is not None and expected in message, message


def test_good_specs_are_admitted_with_defaults(tj_namespace: tuple[Any, str]) -> None:
    custom, namespace = tj_namespace
    assert _create(custom, namespace, "plain", minimal_spec()) is None
    fine = minimal_spec(
        mode="FineTuning", model={"fromJob": "plain", "base": "/models/src.keras", "fineTuneAt": 4}
    )
    assert _create(custom, namespace, "chained", fine) is None
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "plain")
    assert stored["spec"]["training"]["batchSize"] == 16
    assert stored["spec"]["training"]["earlyStopping"] == {
        "enabled": True,
        "monitor": "val_loss",
        "patience": 3,
        "minDelta": 0.001,
        "restoreBestWeights": True,
    }
    assert stored["spec"]["runPolicy"]["suspend"] is False


def test_name_longer_than_a_label_is_rejected(tj_namespace: tuple[Any, str]) -> None:
    custom, namespace = tj_namespace
    message = _create(custom, namespace, "x" * 64, minimal_spec())
    assert message is not None and "metadata.name must be at most 63 characters" in message


def test_spec_is_immutable_except_run_policy(tj_namespace: tuple[Any, str]) -> None:
    custom, namespace = tj_namespace
    assert _create(custom, namespace, "frozen", minimal_spec()) is None

    def patch(spec: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "frozen",
            {"spec": spec},
            _content_type="application/merge-patch+json",
        )

    with pytest.raises(client.ApiException) as error:
        patch({"training": {"epochs": 50}})
    assert error.value.status == 422
    assert "spec is immutable except runPolicy.suspend" in json.loads(error.value.body)["message"]
    patch({"runPolicy": {"suspend": True, "ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 3600}})
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "frozen")
    assert stored["spec"]["runPolicy"]["suspend"] is True


def test_kubectl_apply_reports_a_misspelt_field(
    tj_namespace: tuple[Any, str], kubectl: Callable[..., Any], tmp_path: Path
) -> None:
    _, namespace = tj_namespace
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TransferJob",
        "metadata": {"name": "typo", "namespace": namespace},
        "spec": _set(minimal_spec(), "training.learnigRate", 1e-3),
    }
    path = tmp_path / "typo.yaml"
    path.write_text(json.dumps(manifest))
    result = kubectl("apply", "-f", str(path), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.training.learnigRate"' in result.stderr


def test_kubectl_explain_documents_fields(tj_namespace: tuple[Any, str], kubectl: Callable[..., Any]) -> None:
    out = kubectl("explain", "transferjob.spec.training.earlyStopping").stdout
    assert "Early stopping on validation metrics" in out
    assert "Epochs without improvement before stopping" in out
    assert "patience" in out and "minDelta" in out
