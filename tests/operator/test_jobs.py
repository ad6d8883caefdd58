"""`build_job`: what the training pod gets from a TransferJob."""

from __future__ import annotations

import json

import pytest

from tests.operator.conftest import make_tj
from transferjob.constants import DEFAULT_TRAINER_IMAGE, EXIT_PERMANENT, LABEL_JOB_NAME, LABEL_KUEUE_QUEUE
from transferjob.models import Location, TransferJob
from transferjob_operator.jobs import (
    UpstreamModel,
    build_job,
    build_service,
    host_output_folder,
    job_spec_patch,
    output_dir,
    upstream_model,
)


def _container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def _arg(job: dict, flag: str) -> str:
    args = _container(job)["args"]
    return str(args[args.index(flag) + 1])


def test_job_is_named_and_owned_by_the_transferjob(tj: TransferJob) -> None:
    job = build_job(tj)
    assert job["metadata"]["name"] == "digits"
    assert job["metadata"]["namespace"] == "ml"
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "transferjob.io/v1alpha1",
        "kind": "TransferJob",
        "name": "digits",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert job["spec"]["template"]["metadata"]["labels"][LABEL_JOB_NAME] == "digits"


def test_the_trainer_gets_the_transferjobs_identity_to_own_its_output(tj: TransferJob) -> None:
    """The uid decides who owns the output location: a retry of this job resumes there, another fails."""
    job = build_job(tj)
    assert _arg(job, "--job") == "ml/digits"
    assert _arg(job, "--job-uid") == "uid-1"


def test_same_input_same_manifest(tj: TransferJob) -> None:
    assert build_job(tj) == build_job(make_tj())


def test_paths_are_arguments_under_the_mounts(tj: TransferJob) -> None:
    job = build_job(tj)
    assert _container(job)["command"] == ["python", "-m", "transferjob_trainer"]
    assert _arg(job, "--spec") == "/etc/transferjob/spec.json"
    assert _arg(job, "--data-dir") == "/data/digits"
    assert _arg(job, "--output-dir") == "/output/digits-fe"
    assert _arg(job, "--termination-log") == "/dev/termination-log"
    assert "--init-model" not in _container(job)["args"]
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True
    assert mounts["/output"]["readOnly"] is False
    assert mounts["/etc/transferjob"]["readOnly"] is True
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "datasets"}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert "downwardAPI" in volumes["spec"]  # the spec file comes from the pod template


def test_same_claim_for_data_and_output_is_one_volume() -> None:
    tj = make_tj(
        {
            "data": {"source": {"pvc": {"claimName": "work", "subPath": "in"}}},
            "output": {"location": {"pvc": {"claimName": "work", "subPath": "out"}}},
        }
    )
    job = build_job(tj)
    claims = [v for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert [c["persistentVolumeClaim"]["claimName"] for c in claims] == ["work"]
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    assert mounts["/data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert mounts["/output"] == {"name": "data", "mountPath": "/output", "readOnly": False}
    assert _arg(job, "--data-dir") == "/data/in"
    assert _arg(job, "--output-dir") == "/output/out"


def test_host_path_and_uri_locations() -> None:
    tj = make_tj(
        {
            "data": {"source": {"hostPath": "/srv/digits"}},
            "output": {"location": {"uri": "gs://bucket/models/x"}},
        }
    )
    job = build_job(tj)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["hostPath"] == {"path": "/srv/digits", "type": "Directory"}
    assert "output" not in volumes
    assert _arg(job, "--data-dir") == "/data"
    assert _arg(job, "--output-dir") == "gs://bucket/models/x"


def test_no_host_path_is_created_by_the_kubelet() -> None:
    """A typo must not leave a root-owned folder on the node: every hostPath has type Directory.

    The output's parent is mounted and the (non-root) trainer creates the output folder itself, so it
    is created only in a folder that exists, and owned by the user who writes into it.
    """
    tj = make_tj(
        {
            "mode": "FineTuning",
            "model": {"fromJob": "digits-fe"},
            "data": {"source": {"hostPath": "/srv/digits/"}},
            "output": {"location": {"hostPath": "/srv/models/digits-ft/"}},
        },
        name="digits-ft",
    )
    upstream_location = Location.model_validate({"hostPath": "/srv/models/digits-fe"})
    upstream = upstream_model(
        upstream_location, "/output/digits-fe/model.keras", output_dir(upstream_location)
    )
    assert upstream == UpstreamModel(upstream_location, "model.keras")
    job = build_job(tj, upstream)
    host_paths = {
        v["name"]: v["hostPath"] for v in job["spec"]["template"]["spec"]["volumes"] if "hostPath" in v
    }
    assert host_paths == {
        "data": {"path": "/srv/digits/", "type": "Directory"},
        "output": {"path": "/srv/models", "type": "Directory"},
        "init": {"path": "/srv/models/digits-fe", "type": "Directory"},
    }
    assert _arg(job, "--data-dir") == "/data"
    assert _arg(job, "--output-dir") == "/output/digits-ft"
    assert _arg(job, "--init-model") == "/init/model.keras"
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    assert (mounts["/data"]["readOnly"], mounts["/output"]["readOnly"], mounts["/init"]["readOnly"]) == (
        True,
        False,
        True,
    )


@pytest.mark.parametrize(
    ("host_path", "mounted", "sub"),
    [
        ("/srv/models/run-1", "/srv/models", "run-1"),
        ("/srv/models/run-1/", "/srv/models", "run-1"),
        ("/srv//models/./run-1", "/srv/models", "run-1"),
        ("/out", "/out", ""),  # the node's root is never mounted
        ("/", "/", ""),
    ],
)
def test_host_output_folder(host_path: str, mounted: str, sub: str) -> None:
    assert host_output_folder(host_path) == (mounted, sub)


def test_output_next_to_data_shares_one_volume() -> None:
    tj = make_tj(
        {
            "data": {"source": {"hostPath": "/work"}},
            "output": {"location": {"hostPath": "/work/model"}},
        }
    )
    job = build_job(tj)
    host = [v for v in job["spec"]["template"]["spec"]["volumes"] if "hostPath" in v]
    assert host == [{"name": "data", "hostPath": {"path": "/work", "type": "Directory"}}]
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    assert mounts["/data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert mounts["/output"] == {"name": "data", "mountPath": "/output", "readOnly": False}
    assert _arg(job, "--output-dir") == "/output/model"


def test_pod_passes_pod_security_restricted(tj: TransferJob) -> None:
    pod = build_job(tj)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "projected", "secret", "downwardAPI"}
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= allowed, volume
    assert pod["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # A read-only root filesystem, with HOME and TMPDIR on a writable emptyDir.
    assert ctx["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    scratch = {v["name"]: v for v in pod["volumes"]}[mounts[env["HOME"]]]
    assert "emptyDir" in scratch and env["TMPDIR"] == env["HOME"]


def test_failure_policy_fails_fast_on_permanent_errors(tj: TransferJob) -> None:
    spec = build_job(tj)["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    fail, ignore = spec["podFailurePolicy"]["rules"]
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [EXIT_PERMANENT]}
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["backoffLimit"] == 3
    assert "activeDeadlineSeconds" not in spec
    assert spec["suspend"] is False


def test_resources_placement_and_run_policy() -> None:
    tj = make_tj(
        {
            "data": {"source": {"hostPath": "/d"}},
            "output": {"location": {"hostPath": "/o"}},
            "resources": {
                "gpus": 2,
                "cpu": "4",
                "memory": "16Gi",
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "training",
                "image": "registry.local/trainer:dev",
            },
            "runPolicy": {"backoffLimit": 1, "activeDeadlineSeconds": 3600, "suspend": True},
        }
    )
    job = build_job(tj)
    pod = job["spec"]["template"]["spec"]
    limits = _container(job)["resources"]["limits"]
    assert limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert _container(job)["resources"]["requests"] == limits
    assert _container(job)["image"] == "registry.local/trainer:dev"
    # The spec's image wins over the operator's default.
    assert (
        _container(build_job(tj, trainer_image="mirror.local/trainer:1"))["image"]
        == "registry.local/trainer:dev"
    )
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["suspend"] is True


def test_cpu_only_job_asks_for_no_gpu() -> None:
    tj = make_tj(
        {
            "data": {"source": {"hostPath": "/d"}},
            "output": {"location": {"hostPath": "/o"}},
            "resources": {"gpus": 0},
        }
    )
    assert "resources" not in _container(build_job(tj))


def test_kueue_label_is_carried_and_job_starts_suspended() -> None:
    tj = make_tj(labels={LABEL_KUEUE_QUEUE: "team-a"})
    job = build_job(tj)
    assert job["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-a"
    assert job["spec"]["suspend"] is True
    # Kueue unsuspends admitted Jobs: the operator must not suspend them again.
    admitted = {"spec": {"suspend": False}}
    assert job_spec_patch(tj, admitted) is None


def test_suspend_and_deadline_follow_the_transferjob() -> None:
    tj = make_tj(
        {
            "data": {"source": {"hostPath": "/d"}},
            "output": {"location": {"hostPath": "/o"}},
            "runPolicy": {"suspend": True, "activeDeadlineSeconds": 60},
        }
    )
    assert job_spec_patch(tj, {"spec": {"suspend": False}}) == {
        "spec": {"suspend": True, "activeDeadlineSeconds": 60}
    }
    assert job_spec_patch(tj, build_job(tj)) is None


def test_pod_template_holds_the_resolved_spec_as_a_file(tj: TransferJob) -> None:
    template = build_job(tj)["spec"]["template"]
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "spec"]
    (item,) = volume["downwardAPI"]["items"]
    assert item["path"] == "spec.json"
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations['transferjob.io/spec']"
    mounts = {m["mountPath"]: m for m in _container(build_job(tj))["volumeMounts"]}
    assert mounts["/etc/transferjob"] == {"name": "spec", "mountPath": "/etc/transferjob", "readOnly": True}
    spec = json.loads(template["metadata"]["annotations"]["transferjob.io/spec"])
    assert spec["training"]["epochs"] == 5  # the mode's default, resolved
    assert spec["training"]["learningRate"] == 1e-4


def test_from_job_mounts_the_upstream_output_read_only() -> None:
    tj = make_tj(
        {
            "mode": "FineTuning",
            "model": {"fromJob": "digits-fe"},
            "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "digits"}}},
            "output": {"location": {"pvc": {"claimName": "models", "subPath": "digits-ft"}}},
        },
        name="digits-ft",
    )
    upstream_location = Location.model_validate({"pvc": {"claimName": "models", "subPath": "digits-fe"}})
    upstream = upstream_model(
        upstream_location, "/output/digits-fe/model.keras", output_dir(upstream_location)
    )
    assert upstream == UpstreamModel(upstream_location, "model.keras")
    job = build_job(tj, upstream)
    assert _arg(job, "--init-model") == "/init/digits-fe/model.keras"
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    assert mounts["/init"]["readOnly"] is True


def test_upstream_model_paths() -> None:
    pvc = Location.model_validate({"pvc": {"claimName": "m", "subPath": "a"}})
    assert upstream_model(pvc, "/output/a/best/model.keras", "/output/a").path == "best/model.keras"
    # A path outside the output folder keeps its file name.
    assert upstream_model(pvc, "/mnt/elsewhere/a/model.keras", "/output/a").path == "model.keras"
    uri = Location.model_validate({"uri": "gs://b/a"})
    upstream = upstream_model(uri, "gs://b/a/model.keras", "gs://b/a")
    assert upstream.path == "gs://b/a/model.keras"
    tj = make_tj(
        {
            "mode": "FineTuning",
            "model": {"fromJob": "up"},
            "data": {"source": {"hostPath": "/d"}},
            "output": {"location": {"hostPath": "/o"}},
        }
    )
    assert _arg(build_job(tj, upstream), "--init-model") == "gs://b/a/model.keras"


BASE_SPEC = {
    "data": {"source": {"hostPath": "/srv/digits"}},
    "output": {"location": {"hostPath": "/srv/models/fe"}},
}


def test_weights_cache_is_mounted_read_write_as_keras_home() -> None:
    """Keras reads its cache only from a folder it can write to, so the mount is read-write; the pod's
    KERAS_HOME names it, so `weights: imagenet` loads from it and downloads only what is missing."""
    for cache, source in (
        (
            {"pvc": {"claimName": "keras-weights", "subPath": "v3"}},
            {"persistentVolumeClaim": {"claimName": "keras-weights"}},
        ),
        ({"hostPath": "/var/cache/keras"}, {"hostPath": {"path": "/var/cache/keras", "type": "Directory"}}),
    ):
        tj = make_tj({**BASE_SPEC, "model": {"weightsCache": cache}})
        job = build_job(tj)
        pod = job["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "weights")
        assert {k: v for k, v in volume.items() if k != "name"} == source
        mount = next(m for m in _container(job)["volumeMounts"] if m["name"] == "weights")
        assert mount["readOnly"] is False and mount["mountPath"] == "/keras"
        env = {e["name"]: e["value"] for e in _container(job)["env"]}
        assert env["KERAS_HOME"] == ("/keras/v3" if "pvc" in cache else "/keras")
    assert "KERAS_HOME" not in {e["name"] for e in _container(build_job(make_tj(BASE_SPEC)))["env"]}


def test_unset_image_is_the_operators_default() -> None:
    """A spec without resources.image runs the operator's --trainer-image, else the release image."""
    tj = make_tj({"data": {"source": {"hostPath": "/d"}}, "output": {"location": {"hostPath": "/o"}}})
    assert tj.spec.resources.image is None
    assert _container(build_job(tj))["image"] == DEFAULT_TRAINER_IMAGE
    assert (
        _container(build_job(tj, trainer_image="mirror.local/trainer:1"))["image"] == "mirror.local/trainer:1"
    )


def test_a_worker_group_is_an_indexed_job_behind_a_headless_service() -> None:
    tj = make_tj(
        {
            "mode": "FineTuning",
            "model": {"base": "MobileNetV2"},
            "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "digits"}}},
            "output": {"location": {"pvc": {"claimName": "models", "subPath": "digits-ft"}}},
            "resources": {"workers": 3, "gpus": 1},
            "runPolicy": {"backoffLimit": 2},
        }
    )
    job = build_job(tj)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    # Each index retries backoffLimit times; one index over it (or a permanent error) fails the group.
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (2, 0)
    assert "backoffLimit" not in spec
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    # The chief's success is the group's: a late replacement worker is stopped, not waited for.
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "digits"
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRANSFERJOB_WORKER_HOSTS"] == "digits-0.digits:2222,digits-1.digits:2222,digits-2.digits:2222"
    assert container["ports"] == [{"name": "tf-worker", "containerPort": 2222}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # per worker

    service = build_service(tj)
    assert service["metadata"]["name"] == "digits"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"] == {"transferjob.io/job-name": "digits"}


def test_one_worker_is_a_plain_job_without_a_service_or_group_environment() -> None:
    spec = build_job(make_tj())["spec"]
    assert "completionMode" not in spec and spec["completions"] == 1 and "backoffLimit" in spec
    pod = spec["template"]["spec"]
    assert "subdomain" not in pod
    assert all(e["name"] != "TRANSFERJOB_WORKER_HOSTS" for e in pod["containers"][0]["env"])
