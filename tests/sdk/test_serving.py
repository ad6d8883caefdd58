"""`tj serve`: the KServe InferenceService for a finished job, checked against KServe's own CRD schema.

The schema is KServe's InferenceService CRD (tests/data/kserve/, trimmed to the fields the manifest
uses; its README says from where). `schema_problems` applies it as the API server does with strict
field validation (what `--apply` asks for): types, required fields, enums, patterns, and no field the
schema does not declare.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from transferjob import TransferJobClient
from transferjob.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from transferjob.errors import JobNotReadyError, ModelNotServableError, SpecError
from transferjob.models import TransferJob
from transferjob.serving import ANNOTATION_FROM_JOB, inference_service, storage_uri

KSERVE_CRD = (
    Path(__file__).resolve().parents[1] / "data" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
)
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


@pytest.fixture(scope="module")
def isvc_schema() -> dict[str, Any]:
    crd = yaml.safe_load(KSERVE_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "InferenceService"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def schema_problems(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """What the API server would reject in `value` under a structural schema, strictly validated.

    The root's `metadata` is ObjectMeta whatever the schema says (a CRD may not describe it): the
    fields a manifest sets, with string maps for labels and annotations.
    """
    where = path or "<root>"
    if path == ".metadata":
        yield from metadata_problems(value)
        return
    if value is None:
        if not schema.get("nullable"):
            yield f"{where}: null"
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            yield f"{where}: not an int or a string"
        return
    expected = TYPES[schema["type"]]
    if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
        yield f"{where}: {type(value).__name__} where the schema wants {schema['type']}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}: {value!r} not one of {schema['enum']}"
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield f"{where}: {value!r} does not match {schema['pattern']}"
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            yield f"{where}: length {len(value)} out of bounds"
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from schema_problems(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                yield f"{path}.{name}: required"
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                yield from schema_problems(item, properties[name], f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from schema_problems(item, schema["additionalProperties"], f"{path}.{name}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield f'{path}.{name}: unknown field "{name}"'


#: The ObjectMeta fields a manifest may set.
OBJECT_META = {"name", "generateName", "namespace", "labels", "annotations", "ownerReferences", "finalizers"}


def metadata_problems(metadata: Any) -> Iterator[str]:
    if not isinstance(metadata, dict):
        yield ".metadata: not an object"
        return
    for name, value in metadata.items():
        if name not in OBJECT_META:
            yield f'.metadata.{name}: unknown field "{name}"'
        elif name in ("labels", "annotations") and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            yield f".metadata.{name}: not a map of strings"
        elif name in ("name", "namespace") and not isinstance(value, str):
            yield f".metadata.{name}: not a string"


def finished_job(output: dict[str, Any], saved_model_uri: str | None, **metadata: Any) -> TransferJob:
    """A TransferJob that succeeded, as `client.get` returns it, with the model where the trainer said."""
    return TransferJob.model_validate(
        {
            "metadata": {"name": "digits-fe", "namespace": "vision", **metadata},
            "spec": {
                "model": {"base": "MobileNetV2"},
                "data": {"source": {"pvc": {"claimName": "datasets"}}},
                "output": {"location": output},
            },
            "status": {
                "phase": "Succeeded",
                "model": {"uri": "/output/runs/fe/model.keras", "savedModelUri": saved_model_uri},
            },
        }
    )


PVC_JOB = {"pvc": {"claimName": "models", "subPath": "runs/fe"}}


def test_a_pvc_output_is_served_from_its_saved_model_folder(isvc_schema: dict[str, Any]) -> None:
    manifest = inference_service(finished_job(PVC_JOB, "/output/runs/fe/saved_model"))
    assert list(schema_problems(manifest, isvc_schema)) == []
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"] == {
        "name": "digits-fe",
        "namespace": "vision",
        "annotations": {ANNOTATION_FROM_JOB: "digits-fe"},
    }
    assert manifest["spec"] == {
        "predictor": {
            "model": {
                "modelFormat": {"name": "tensorflow", "version": "2"},
                "storageUri": "pvc://models/runs/fe/saved_model",
            }
        }
    }


def test_the_job_name_label_is_left_to_the_operators_pods() -> None:
    """KServe copies an InferenceService's labels onto its pods; the operator finds training pods by
    `transferjob.io/job-name`, so the manifest carries the job's name as an annotation only."""
    manifest = inference_service(finished_job(PVC_JOB, "/output/runs/fe/saved_model"))
    assert "labels" not in manifest["metadata"]


@pytest.mark.parametrize(
    ("output", "saved", "uri"),
    [
        ({"pvc": {"claimName": "models"}}, "/output/saved_model", "pvc://models/saved_model"),
        (
            {"uri": "s3://models/runs/fe"},
            "s3://models/runs/fe/saved_model",
            "s3://models/runs/fe/saved_model",
        ),
        ({"uri": "gs://models/fe/"}, "gs://models/fe/saved_model", "gs://models/fe/saved_model"),
    ],
)
def test_storage_uri_names_the_output_as_the_cluster_does(
    output: dict[str, Any], saved: str, uri: str, isvc_schema: dict[str, Any]
) -> None:
    job = finished_job(output, saved)
    assert storage_uri(job) == uri
    manifest = inference_service(job, service_account="model-reader")
    assert manifest["spec"]["predictor"]["serviceAccountName"] == "model-reader"
    assert list(schema_problems(manifest, isvc_schema)) == []


@pytest.mark.parametrize(
    ("output", "saved"),
    [
        ({"hostPath": "/srv/models/fe"}, "/output/fe/saved_model"),
        ({"uri": "/models/fe"}, "/models/fe/saved_model"),
    ],
)
def test_a_model_on_one_node_or_in_the_container_cannot_be_served(output: dict[str, Any], saved: str) -> None:
    with pytest.raises(ModelNotServableError, match="which no server in a cluster can read"):
        inference_service(finished_job(output, saved))


def test_no_model_yet_or_no_saved_model_say_so() -> None:
    running = finished_job(PVC_JOB, None).model_copy(deep=True)
    assert running.status is not None
    running.status.phase = running.status.phase.RUNNING
    with pytest.raises(JobNotReadyError, match="has not succeeded"):
        inference_service(running)
    with pytest.raises(ModelNotServableError, match=r"spec\.output\.savedModel is false"):
        inference_service(finished_job(PVC_JOB, None))


def test_a_job_name_kserve_refuses_needs_another_name(isvc_schema: dict[str, Any]) -> None:
    job = finished_job(PVC_JOB, "/output/runs/fe/saved_model", name="5-9-fe")
    with pytest.raises(SpecError, match="is not an InferenceService name"):
        inference_service(job)
    manifest = inference_service(job, name="digits-5-9")
    assert manifest["metadata"]["name"] == "digits-5-9"
    assert manifest["metadata"]["annotations"] == {ANNOTATION_FROM_JOB: "5-9-fe"}


def test_the_schema_check_catches_what_the_api_server_would(isvc_schema: dict[str, Any]) -> None:
    """The check can fail: a misspelt field, a wrong type and a missing required field are found."""
    manifest = inference_service(finished_job(PVC_JOB, "/output/runs/fe/saved_model"))
    model = manifest["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    model["modelFormat"] = {"version": 2}
    assert sorted(schema_problems(manifest, isvc_schema)) == [
        ".spec.predictor.model.modelFormat.name: required",
        ".spec.predictor.model.modelFormat.version: int where the schema wants string",
        '.spec.predictor.model.storageURI: unknown field "storageURI"',
    ]


# ---------------------------------------------------------------------------------------------- CLI


def tj(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_tj_serve_prints_the_manifest(
    tj_home: Path, monkeypatch: pytest.MonkeyPatch, isvc_schema: dict[str, Any]
) -> None:
    job = finished_job({"uri": "s3://models/fe"}, "s3://models/fe/saved_model")
    monkeypatch.setattr(TransferJobClient, "get", lambda self, name: job)
    code, out = tj("serve", "digits-fe", "--local", "--name", "digits")
    assert code == EXIT_OK
    manifest = yaml.safe_load(out)
    assert manifest["metadata"]["name"] == "digits"
    assert manifest["spec"]["predictor"]["model"]["storageUri"] == "s3://models/fe/saved_model"
    assert list(schema_problems(manifest, isvc_schema)) == []


def test_tj_serve_errors_are_one_line(
    tj_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served = finished_job(PVC_JOB, "/output/runs/fe/saved_model")
    monkeypatch.setattr(TransferJobClient, "get", lambda self, name: served)
    assert tj("serve", "digits-fe", "--local", "--apply")[0] == EXIT_FAILED
    assert capsys.readouterr().err == (
        "tj: error: creating an InferenceService needs the kubernetes backend; print the manifest "
        "(without --apply) and apply it with kubectl\n"
    )
    assert tj("serve", "digits-fe", "--local", "--name", "9lives")[0] == EXIT_USAGE
    assert "is not an InferenceService name" in capsys.readouterr().err
    on_a_node = finished_job({"hostPath": "/srv/models/fe"}, "/output/fe/saved_model")
    monkeypatch.setattr(TransferJobClient, "get", lambda self, name: on_a_node)
    assert tj("serve", "digits-fe", "--local")[0] == EXIT_FAILED
    error = capsys.readouterr().err
    assert error.startswith("tj: error: TransferJob 'digits-fe' wrote its model to hostPath /srv/models/fe")
    assert error.count("\n") == 1
