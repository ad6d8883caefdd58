"""Which locations a spec may name, and the storage block: the SDK's verdict (the API server's twin is
the same CEL rule, checked by tests/cluster/test_corpus.py with the cases in tests/corpus/admission.yaml)."""

from __future__ import annotations

from typing import Any

import pytest

from transferjob.errors import SpecError
from transferjob.models import parse_spec


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data": {"source": {"uri": "s3://datasets/digits"}},
        "output": {"location": {"uri": "s3://models/out"}},
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "uri", ["s3://b/digits", "gs://b/digits", "file:///srv/digits", "/srv/digits", "s3://bucket"]
)
def test_folder_locations_admitted(uri: str) -> None:
    parsed = parse_spec(spec(data={"source": {"uri": uri}}, output={"location": {"uri": uri}}))
    assert parsed.data.source.uri == uri


@pytest.mark.parametrize(
    ("field", "uri"),
    [
        ("data.source", "https://example.com/digits"),
        ("data.source", "hdfs://namenode/digits"),
        ("data.source", "az://container/digits"),
        ("output.location", "http://example.com/out"),
        ("output.location", "S3://b/out"),
    ],
)
def test_unsupported_schemes_rejected_naming_the_field(field: str, uri: str) -> None:
    section, key = field.split(".")
    with pytest.raises(SpecError) as error:
        parse_spec(spec(**{section: {key: {"uri": uri}}}))
    assert any(p.startswith(f"spec.{field}.uri: ") for p in error.value.problems), error.value.problems
    if uri.startswith(("https", "hdfs", "az")):
        assert "no other scheme is supported" in str(error.value)


@pytest.mark.parametrize("uri", ["https://models.example.com/m.keras", "s3://b/m.keras", "gs://b/m.h5"])
def test_single_files_may_come_from_https(uri: str) -> None:
    parsed = parse_spec(spec(mode="FineTuning", model={"base": "MobileNetV2", "fromModel": uri}))
    assert parsed.model.from_model == uri


def test_from_model_of_an_unsupported_scheme_rejected() -> None:
    with pytest.raises(
        SpecError, match=r"spec.model.fromModel: fromModel must be .* \(s3://, gs://, https://"
    ):
        parse_spec(spec(mode="FineTuning", model={"fromModel": "hdfs://nn/m.keras"}))


def test_storage_block() -> None:
    parsed = parse_spec(
        spec(storage={"secretName": "s3-creds", "endpointURL": "http://minio.minio:9000", "region": "eu-1"})
    )
    assert parsed.storage is not None and parsed.storage.endpoint_url == "http://minio.minio:9000"
    assert parsed.to_dict()["storage"]["endpointURL"] == "http://minio.minio:9000"


@pytest.mark.parametrize(
    ("storage", "field"),
    [
        ({"secretName": "Not_A_Name"}, "spec.storage.secretName"),
        ({"endpointURL": "minio:9000"}, "spec.storage.endpointURL"),
        ({"endpointURL": "http://minio:9000/bucket"}, "spec.storage.endpointURL"),
        ({"region": "EU West"}, "spec.storage.region"),
        ({"accessKey": "AKIA..."}, "spec.storage.accessKey"),
    ],
)
def test_storage_block_rejects(storage: dict[str, str], field: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(spec(storage=storage))
    assert any(p.startswith(f"{field}: ") for p in error.value.problems), error.value.problems
