"""TransferJob -> batch/v1 Job: the pure translation, no API calls.

Everything the training pod needs is decided here from the TransferJob alone (plus, for `fromJob`, where
the upstream job exported its model), so the same input always yields the same manifest. That is what
makes creation idempotent: the Job's name is the TransferJob's name, a second reconcile builds the same
object, and the API server's 409 on a second POST is the proof that the Job already exists.

Paths are handed to the trainer as command-line arguments (`--data-dir /data/<subPath>`), never baked
into the spec file: the container paths belong to the pod, not to the spec, which the local backend
runs with the user's own paths.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from transferjob.constants import (
    API_VERSION,
    DEFAULT_TRAINER_IMAGE,
    EXIT_PERMANENT,
    GROUP,
    KIND,
    LABEL_JOB_NAME,
    LABEL_KUEUE_QUEUE,
    LABEL_MODE,
    TERMINATION_MESSAGE_PATH,
)
from transferjob.models import Location, TransferJob

#: The trainer's container name; podFailurePolicy and the log follower refer to it.
CONTAINER = "trainer"
#: The trainer's entry point. `python` is the interpreter of the trainer image.
TRAINER_COMMAND = ["python", "-m", "transferjob_trainer"]

SPEC_MOUNT = "/etc/transferjob"
SPEC_FILE = "spec.json"
#: The pod-template annotation that carries the resolved spec (mounted as SPEC_MOUNT/SPEC_FILE).
SPEC_ANNOTATION = f"{GROUP}/spec"
DATA_MOUNT = "/data"
OUTPUT_MOUNT = "/output"
INIT_MOUNT = "/init"
WEIGHTS_MOUNT = "/keras"
SCRATCH_MOUNT = "/scratch"

#: The non-root identity the training pod runs as (Pod Security "restricted" wants a numeric one).
RUN_AS_USER = 1000

#: The port a worker of a group listens on for the others (TensorFlow's gRPC server).
WORKER_PORT = 2222
#: The environment variable that hands each worker the group's addresses (`transferjob_trainer.workers`).
WORKER_HOSTS_ENV = "TRANSFERJOB_WORKER_HOSTS"

MANAGED_BY = "transferjob-operator"


@dataclass(frozen=True)
class UpstreamModel:
    """Where a `fromJob` TransferJob finds the model it fine-tunes.

    `location` is the upstream job's output location (mounted read-only at /init); `path` is the model
    relative to that location's folder, or a full URI when the location is a URI.
    """

    location: Location
    path: str


def job_name(tj_name: str) -> str:
    """The child Job's name: the TransferJob's own, so that there can never be two of them."""
    return tj_name


def labels_for(tj: TransferJob) -> dict[str, str]:
    """Labels on the Job and its pods: how the operator finds what belongs to a job."""
    name = tj.metadata.name or ""
    labels = {
        LABEL_JOB_NAME: name,
        LABEL_MODE: tj.spec.mode.value,
        "app.kubernetes.io/name": "transferjob",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    queue = tj.metadata.labels.get(LABEL_KUEUE_QUEUE)
    if queue:
        labels[LABEL_KUEUE_QUEUE] = queue
    return labels


def service_name(tj_name: str) -> str:
    """A worker group's headless Service: named after the TransferJob, like its Job."""
    return tj_name


def worker_hosts(tj: TransferJob) -> list[str]:
    """Every worker's stable address, in index order: an Indexed Job names pod i's host `<job>-<i>`, and
    the headless Service (the pods' subdomain) makes `<job>-<i>.<service>` resolve to it."""
    name = tj.metadata.name or ""
    return [
        f"{job_name(name)}-{i}.{service_name(name)}:{WORKER_PORT}" for i in range(tj.spec.resources.workers)
    ]


def build_service(tj: TransferJob) -> dict[str, Any]:
    """The headless Service that gives a worker group's pods their DNS names (workers > 1 only).

    `publishNotReadyAddresses`: the workers look each other up while they start, before any is Ready.
    """
    name = tj.metadata.name or ""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(name),
            "namespace": tj.metadata.namespace,
            "labels": labels_for(tj),
            "ownerReferences": [owner_reference(tj)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB_NAME: name},
            "ports": [{"name": "tf-worker", "port": WORKER_PORT, "targetPort": WORKER_PORT}],
        },
    }


def owner_reference(tj: TransferJob) -> dict[str, Any]:
    """Makes the garbage collector delete the Job and its pods with the TransferJob."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": tj.metadata.name,
        "uid": tj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def spec_document(tj: TransferJob) -> str:
    """The spec with every default resolved, as the trainer reads it (and `kubectl get job -o yaml` shows)."""
    return json.dumps(tj.spec.to_dict(), indent=2, sort_keys=True)


def spec_volume_source() -> dict[str, Any]:
    """The spec file in the pod: the pod template's spec annotation, exposed by the downward API.

    No ConfigMap: one API write less per TransferJob, and nothing that can be missing when the pod
    starts. The annotation is part of the Job's (immutable) pod template, like the spec it copies.
    """
    ref = {"fieldPath": f"metadata.annotations['{SPEC_ANNOTATION}']"}
    return {"downwardAPI": {"items": [{"path": SPEC_FILE, "fieldRef": ref}]}}


class _Volumes:
    """Collects pod volumes, reusing one volume when two mounts use the same claim or node folder.

    Read-only-ness belongs to each mount, not to the volume, so data (read-only) and output
    (read-write) in one claim share a volume.
    """

    def __init__(self) -> None:
        self.volumes: list[dict[str, Any]] = []
        self.mounts: list[dict[str, Any]] = []
        self._by_source: dict[str, str] = {}

    def add(self, name: str, source: dict[str, Any], mount_path: str, read_only: bool) -> None:
        key = json.dumps(source, sort_keys=True)
        volume = self._by_source.get(key)
        if volume is None:
            volume = name
            self._by_source[key] = name
            self.volumes.append({"name": name, **source})
        self.mounts.append({"name": volume, "mountPath": mount_path, "readOnly": read_only})


def host_output_folder(host_path: str) -> tuple[str, str]:
    """The node folder an output hostPath mounts, and the sub-folder of it the trainer creates.

    The kubelet creates a missing `DirectoryOrCreate` folder as root, mode 0755, where the non-root
    trainer cannot write: a typo would leave a root-owned folder behind and the job would fail anyway.
    So nothing is created by the kubelet: the output's parent folder is mounted with type `Directory`
    (it must exist), and the trainer creates the last component itself, owned by the user it runs as.
    A folder directly under `/` is mounted itself (it must exist too): the node's root is never mounted.
    """
    folder = posixpath.normpath(host_path)
    parent, leaf = posixpath.split(folder)
    if not leaf or parent == "/":
        return folder, ""
    return parent, leaf


def _mount_location(
    volumes: _Volumes, name: str, location: Location, mount: str, read_only: bool, output: bool = False
) -> str:
    """Mount a location (when it is a volume) and return the folder the trainer should use.

    A hostPath is mounted with type `Directory`: a missing folder keeps the pod in ContainerCreating
    with a FailedMount event naming it, instead of the kubelet creating it on the node. An `output`
    hostPath mounts its parent (see `host_output_folder`).
    """
    if location.pvc is not None:
        volumes.add(name, {"persistentVolumeClaim": {"claimName": location.pvc.claim_name}}, mount, read_only)
        return posixpath.join(mount, location.pvc.sub_path) if location.pvc.sub_path else mount
    if location.host_path is not None:
        folder, sub = host_output_folder(location.host_path) if output else (location.host_path, "")
        volumes.add(name, {"hostPath": {"path": folder, "type": "Directory"}}, mount, read_only)
        return posixpath.join(mount, sub) if sub else mount
    return location.uri or ""


def upstream_model(location: Location, model_uri: str, container_output_dir: str) -> UpstreamModel:
    """Where the model an upstream job exported lies, relative to its output location.

    The trainer reports the path it wrote to, as seen inside its container (`/output/<subPath>/...`),
    or a URI. A path under the upstream's output folder becomes relative to that folder; a path elsewhere
    keeps only its file name (the trainer exports to the top of its output folder).
    """
    if location.uri is not None:
        return UpstreamModel(location, model_uri)
    prefix = container_output_dir.rstrip("/") + "/"
    if model_uri.startswith(prefix):
        return UpstreamModel(location, model_uri[len(prefix) :])
    return UpstreamModel(location, posixpath.basename(model_uri))


def output_dir(location: Location) -> str:
    """The output folder as the trainer sees it: what `--output-dir` gets."""
    return _mount_location(_Volumes(), "output", location, OUTPUT_MOUNT, read_only=False, output=True)


def _resources(tj: TransferJob) -> dict[str, Any]:
    res = tj.spec.resources
    amounts: dict[str, str] = {}
    if res.cpu:
        amounts["cpu"] = res.cpu
    if res.memory:
        amounts["memory"] = res.memory
    if res.gpus:
        amounts["nvidia.com/gpu"] = str(res.gpus)
    # Requests equal limits: a training pod that is throttled or evicted half-way wastes GPU hours.
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def pod_failure_policy() -> dict[str, Any]:
    """Fail at once on the trainer's permanent-error exit code; don't count disruptions as failures."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_job(
    tj: TransferJob, upstream: UpstreamModel | None = None, trainer_image: str = DEFAULT_TRAINER_IMAGE
) -> dict[str, Any]:
    """The training Job for a TransferJob (and, for `fromJob`, the model it starts from).

    `trainer_image` is the operator's default image, for specs that name none: a platform team sets it
    once (a registry mirror, a pinned digest) instead of every user writing it into every spec.
    """
    name = tj.metadata.name or ""
    spec = tj.spec
    volumes = _Volumes()
    volumes.add("spec", spec_volume_source(), SPEC_MOUNT, read_only=True)
    volumes.add("scratch", {"emptyDir": {}}, SCRATCH_MOUNT, read_only=False)
    data_dir = _mount_location(volumes, "data", spec.data.source, DATA_MOUNT, read_only=True)
    output = spec.output.location
    out_dir = _mount_location(volumes, "output", output, OUTPUT_MOUNT, read_only=False, output=True)
    args = [
        "--spec",
        posixpath.join(SPEC_MOUNT, SPEC_FILE),
        "--data-dir",
        data_dir,
        "--output-dir",
        out_dir,
        "--termination-log",
        TERMINATION_MESSAGE_PATH,
    ]
    if upstream is not None:
        init_dir = _mount_location(volumes, "init", upstream.location, INIT_MOUNT, read_only=True)
        init = upstream.path if upstream.location.uri is not None else posixpath.join(init_dir, upstream.path)
        args += ["--init-model", init]
    if tj.metadata.uid:
        # The trainer records this TransferJob as the output location's owner: a retry (the same uid)
        # resumes there, and another job pointed at it fails with OutputInUse.
        namespace = tj.metadata.namespace
        args += ["--job", f"{namespace}/{name}" if namespace else name, "--job-uid", tj.metadata.uid]

    env = [
        {"name": "HOME", "value": SCRATCH_MOUNT},
        {"name": "TMPDIR", "value": SCRATCH_MOUNT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.model.weights_cache is not None:
        # Read-write: Keras ignores a cache folder it cannot write to (and downloads into /tmp instead).
        cache = _mount_location(volumes, "weights", spec.model.weights_cache, WEIGHTS_MOUNT, read_only=False)
        env.append({"name": "KERAS_HOME", "value": cache})

    storage = spec.storage
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.resources.image or trainer_image,
        "imagePullPolicy": spec.resources.image_pull_policy,
        "command": list(TRAINER_COMMAND),
        "args": args,
        # HOME and TMPDIR on the scratch volume: Keras caches weights under ~/.keras (unless KERAS_HOME
        # names model.weightsCache), exports go through temporary files, and the root filesystem is
        # read-only.
        "env": env,
        # The object-store credentials: the Secret's keys as environment variables, resolved by the
        # kubelet. The operator never reads the Secret, and nothing secret is in the Job's manifest; a
        # missing Secret keeps the pod in CreateContainerConfigError, naming it.
        **(
            {"envFrom": [{"secretRef": {"name": storage.secret_name}}]}
            if storage and storage.secret_name
            else {}
        ),
        "volumeMounts": volumes.mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    resources = _resources(tj)
    if resources:
        container["resources"] = resources
    workers = spec.resources.workers
    if workers > 1:
        # The trainer writes TF_CONFIG from these and JOB_COMPLETION_INDEX (one pod template for all).
        env.append({"name": WORKER_HOSTS_ENV, "value": ",".join(worker_hosts(tj))})
        container["ports"] = [{"name": "tf-worker", "containerPort": WORKER_PORT}]

    res = spec.resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy requires it; retries are new pods, counted by the Job
        "automountServiceAccountToken": False,  # the trainer never talks to the API server
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes.volumes,
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_dict() for t in res.tolerations]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if workers > 1:
        pod_spec["subdomain"] = service_name(name)

    labels = labels_for(tj)
    run = spec.run_policy
    job_spec: dict[str, Any] = {
        "backoffLimit": run.backoff_limit,
        "completions": workers,
        "parallelism": workers,
        # A replacement pod only once the failed one is gone: never two pods holding GPUs at once.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        # Kueue admits a queued Job by unsuspending it, so such Jobs start suspended.
        "suspend": run.suspend or LABEL_KUEUE_QUEUE in labels,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": {SPEC_ANNOTATION: spec_document(tj)}},
            "spec": pod_spec,
        },
    }
    if workers > 1:
        # One pod per index, all at once. A worker that fails retryably is replaced (same index, same
        # hostname) and the others, whose collectives then fail, are replaced too: the group restarts
        # from the last checkpoint, each index at most backoffLimit times; one index over its limit, or
        # a permanent error on any worker (podFailurePolicy), fails the Job.
        # The chief decides success (successPolicy): once worker 0 has tested and exported, the Job is
        # done and the Job controller stops any other pod still there, such as a replacement worker that
        # started after the group had finished and would wait for its peers forever.
        del job_spec["backoffLimit"]
        job_spec |= {
            "completionMode": "Indexed",
            "backoffLimitPerIndex": run.backoff_limit,
            "maxFailedIndexes": 0,
            "successPolicy": {"rules": [{"succeededIndexes": "0"}]},
        }
    if run.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = run.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name),
            "namespace": tj.metadata.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(tj)],
        },
        "spec": job_spec,
    }


def mutable_job_fields(tj: TransferJob) -> dict[str, Any]:
    """The Job fields that follow the TransferJob after creation (the rest of the spec is immutable).

    Kueue owns `suspend` of queued Jobs, so for those only a request to suspend is passed on.
    """
    run = tj.spec.run_policy
    fields: dict[str, Any] = {"activeDeadlineSeconds": run.active_deadline_seconds}
    if LABEL_KUEUE_QUEUE not in tj.metadata.labels or run.suspend:
        fields["suspend"] = run.suspend
    return fields


def job_spec_patch(tj: TransferJob, job: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch for the Job's spec when suspend or the deadline changed, else None."""
    current = job.get("spec", {})
    wanted = mutable_job_fields(tj)
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    return {"spec": changed} if changed else None
