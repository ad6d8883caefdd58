"""The serving handoff: a KServe `InferenceService` for a finished TransferJob's SavedModel (pure).

The trainer exports the SavedModel as TensorFlow Serving loads a model: a base folder (`saved_model/`
in the job's output) holding numbered version folders (`1/`), of which a server loads the highest.
`.status.model.savedModelUri` names that base folder as the trainer saw it. KServe's TensorFlow runtime
(TensorFlow Serving) gets `storageUri` at /mnt/models and serves the versions in it, so `storageUri` is
the base folder as the cluster names it: `pvc://<claim>/<subPath>/saved_model` for an output on a
PersistentVolumeClaim (KServe mounts it), the bucket URI (s3://, gs://) for one in an object store
(KServe's storage initializer downloads it). A hostPath output lies on one node's disk, and a path in
the trainer's container is gone with the container: no server in the cluster can reach either.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from transferjob.constants import GROUP
from transferjob.errors import JobNotReadyError, ModelNotServableError, SpecError
from transferjob.models import Phase, TransferJob

ISVC_GROUP = "serving.kserve.io"
ISVC_VERSION = "v1beta1"
ISVC_API_VERSION = f"{ISVC_GROUP}/{ISVC_VERSION}"
ISVC_KIND = "InferenceService"
ISVC_PLURAL = "inferenceservices"
#: What KServe's validating webhook accepts as an InferenceService name (`IsvcNameFmt`): a DNS-1035
#: label, which must start with a letter where a TransferJob's name may start with a digit.
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ISVC_NAME_MAX = 63
#: The model format KServe picks a runtime by: a TensorFlow 2 SavedModel (TensorFlow Serving serves it).
MODEL_FORMAT = {"name": "tensorflow", "version": "2"}
#: Object-store schemes KServe's storage initializer downloads from, of those an output may use.
SERVABLE_SCHEMES = ("s3://", "gs://")
#: The annotation naming the TransferJob whose model an InferenceService serves. Not a label: the
#: operator finds a job's pods by the `transferjob.io/job-name` label, and KServe copies an
#: InferenceService's labels onto its predictor's pods.
ANNOTATION_FROM_JOB = f"{GROUP}/from-job"


def exported_saved_model(job: TransferJob) -> str:
    """`.status.model.savedModelUri` of a job that succeeded; why there is none otherwise."""
    name = job.metadata.name
    status = job.status
    if status is None or status.phase is not Phase.SUCCEEDED or status.model is None:
        phase = status.phase.value if status and status.phase else "unknown"
        raise JobNotReadyError(
            f"TransferJob {name!r} has not succeeded (phase {phase}): no model to serve yet"
        )
    if not status.model.saved_model_uri:
        raise ModelNotServableError(
            f"TransferJob {name!r} exported no SavedModel (spec.output.savedModel is false); run it again "
            "with savedModel: true"
        )
    return status.model.saved_model_uri


def storage_uri(job: TransferJob) -> str:
    """Where a server in the cluster finds the job's SavedModel base folder (see the module docstring).

    The trainer writes it at the top of its output folder, so its folder name is all the status path
    adds to the output location.
    """
    saved = exported_saved_model(job)
    location = job.spec.output.location
    if location.pvc is not None:
        folder = posixpath.basename(saved.rstrip("/"))
        return f"pvc://{location.pvc.claim_name}/{posixpath.join(location.pvc.sub_path, folder)}"
    if saved.startswith(SERVABLE_SCHEMES):
        return saved
    where = f"hostPath {location.host_path}" if location.host_path else f"{saved}"
    raise ModelNotServableError(
        f"TransferJob {job.metadata.name!r} wrote its model to {where}, which no server in a cluster can "
        "read: serve a job whose spec.output.location is a pvc or an s3:// or gs:// uri (or copy the "
        "saved_model folder there)"
    )


def inference_service(
    job: TransferJob, *, name: str | None = None, service_account: str | None = None
) -> dict[str, Any]:
    """The InferenceService (serving.kserve.io/v1beta1) that serves `job`'s SavedModel.

    Named after the job unless `name` says otherwise, in the job's namespace when it has one (a local
    job's manifest is applied with `kubectl -n`). `service_account` is the predictor's: KServe reads
    object-store credentials from the Secrets a ServiceAccount lists.
    """
    service = name or job.metadata.name or ""
    if len(service) > ISVC_NAME_MAX or not ISVC_NAME.match(service):
        raise SpecError(
            [
                f"metadata.name: {service!r} is not an InferenceService name (KServe wants lower-case "
                f"letters, digits and '-', starting with a letter, at most {ISVC_NAME_MAX} characters); "
                "choose one with --name"
            ]
        )
    metadata: dict[str, Any] = {"name": service}
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    metadata["annotations"] = {ANNOTATION_FROM_JOB: job.metadata.name or ""}
    predictor: dict[str, Any] = {"model": {"modelFormat": dict(MODEL_FORMAT), "storageUri": storage_uri(job)}}
    if service_account:
        predictor["serviceAccountName"] = service_account
    return {
        "apiVersion": ISVC_API_VERSION,
        "kind": ISVC_KIND,
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }
