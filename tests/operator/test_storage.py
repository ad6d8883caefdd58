"""Object-store locations in the training pod: URIs as arguments, credentials only by reference."""

from __future__ import annotations

import json

from tests.operator.conftest import make_tj
from transferjob.models import TransferJob
from transferjob_operator.jobs import build_job, upstream_model

SECRET_NAME = "team-s3-credentials"


def s3_tj(storage: dict[str, str] | None = None) -> TransferJob:
    spec = {
        "data": {"source": {"uri": "s3://datasets/digits"}},
        "output": {"location": {"uri": "s3://models/digits-fe"}},
        **({"storage": storage} if storage else {}),
    }
    return make_tj(spec)


def test_secret_is_referenced_never_copied() -> None:
    tj = s3_tj({"secretName": SECRET_NAME, "endpointURL": "http://minio.storage:9000", "region": "eu-west-1"})
    job = build_job(tj)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]
    # Nothing secret in the manifest: no credential variable is set literally, no Secret is mounted.
    names = {e["name"] for e in container["env"]}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert all("secret" not in v for v in pod["volumes"])
    # The endpoint and region travel in the spec file the trainer reads, not as credentials.
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    stored = json.loads(next(iter(annotations.values())))
    assert stored["storage"] == {
        "secretName": SECRET_NAME,
        "endpointURL": "http://minio.storage:9000",
        "region": "eu-west-1",
    }


def test_object_store_locations_are_arguments_not_volumes() -> None:
    job = build_job(s3_tj())
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--data-dir") + 1] == "s3://datasets/digits"
    assert args[args.index("--output-dir") + 1] == "s3://models/digits-fe"
    assert {v["name"] for v in pod["volumes"]} == {"spec", "scratch"}
    assert "envFrom" not in pod["containers"][0], "no Secret named, none referenced"


def test_fine_tuning_from_a_job_in_the_store_passes_the_model_uri() -> None:
    upstream = s3_tj().spec.output.location
    ft = make_tj(
        {
            "mode": "FineTuning",
            "model": {"fromJob": "digits-fe"},
            "data": {"source": {"uri": "s3://datasets/digits"}},
            "output": {"location": {"uri": "s3://models/digits-ft"}},
            "storage": {"secretName": SECRET_NAME},
        }
    )
    job = build_job(ft, upstream_model(upstream, "s3://models/digits-fe/model.keras", "/output"))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--init-model") + 1] == "s3://models/digits-fe/model.keras"
