"""The images a real node runs, built from our Dockerfiles (``transferjob_testing.images``), run with runc.

Each check runs a process in an image the way a restricted pod's container runs (read-only root, no
capabilities, a numeric non-root user), so an image that cannot start, lacks a dependency or writes
outside its volumes fails here, before any cluster test. The session fixture builds what is missing
(minutes the first time: a Debian rootfs and TensorFlow from the package index; nothing once built).

Marked ``node``: like the real-node tier they need root and the node's tools (buildah, debootstrap,
runc), and ``TJ_SKIP_NODE=1`` skips them.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from transferjob.constants import TERMINATION_MESSAGE_PATH
from transferjob.datasets import write_digits
from transferjob.models import TransferJob
from transferjob.progress import Finished, decode
from transferjob_operator.jobs import RUN_AS_USER, SPEC_ANNOTATION, build_job
from transferjob_testing.images import (
    ImageBuildError,
    Mount,
    ProjectImages,
    build_images,
    image_config,
    run_in_image,
    tensorflow_version,
)

pytestmark = pytest.mark.node


@pytest.fixture(scope="session")
def project_images() -> ProjectImages:
    if os.environ.get("TJ_SKIP_NODE") == "1":
        pytest.skip("TJ_SKIP_NODE=1: image tests skipped on request")
    problem = ""
    try:
        return build_images()
    except ImageBuildError as exc:
        problem = str(exc)
    pytest.fail(f"the images did not build: {problem}", pytrace=False)


def test_unchanged_inputs_build_nothing(project_images: ProjectImages) -> None:
    progress = io.StringIO()
    start = time.monotonic()
    again = build_images(progress)
    assert again == project_images
    assert progress.getvalue() == ""
    assert time.monotonic() - start < 5
    assert all(image.archive.is_file() for image in again.all())


def test_images_run_as_numeric_non_root_users(project_images: ProjectImages) -> None:
    """Pod Security "restricted" can check `runAsNonRoot` only against a numeric user."""
    users = {name: image_config(ref).get("User") for name, ref in project_images.refs().items()}
    assert users == {
        "trainer": f"{RUN_AS_USER}:{RUN_AS_USER}",
        "operator": "65532:65532",
        "pause": "65535:65535",
    }
    assert image_config(project_images.trainer.ref)["Entrypoint"] == ["transferjob-trainer"]
    assert image_config(project_images.operator.ref)["Entrypoint"] == ["tj-operator"]
    assert image_config(project_images.pause.ref)["Entrypoint"] == ["/pause"]


@pytest.mark.parametrize("name", ["trainer", "operator"])
def test_no_build_host_settings_in_the_images(project_images: ProjectImages, name: str) -> None:
    """The host's pip settings are mounted for the build only, and debootstrap's copy of its resolver goes."""
    ref = project_images.refs()[name]
    files = ["/etc/pip.conf", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"]
    sizes = "import os, sys; print([os.path.getsize(f) for f in sys.argv[1:]])"
    proc = run_in_image(ref, ["python", "-c", sizes, *files])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([0] * len(files))


def test_trainer_image_has_tensorflow_and_the_trainer(project_images: ProjectImages) -> None:
    """With a writable /tmp: importing TensorFlow needs a temporary folder (absl's test utilities look
    for one), which a pod with a read-only root must mount (the operator's sets TMPDIR=/scratch)."""
    ref = project_images.trainer.ref
    imports = (
        "import keras, PIL, pydantic, tensorflow, transferjob_trainer, yaml; print(tensorflow.__version__)"
    )
    tmp = [Mount("/tmp")]
    proc = run_in_image(ref, ["python", "-c", imports], env={"TF_CPP_MIN_LOG_LEVEL": "3"}, mounts=tmp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == tensorflow_version()
    proc = run_in_image(ref, ["transferjob-trainer", "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--spec" in proc.stdout


def test_trainer_trains_in_its_image_as_the_pod_template_runs_it(
    project_images: ProjectImages, tmp_path: Path
) -> None:
    """The container of the operator's Job, as the kubelet would start it: same command, arguments,
    environment, user, read-only root and volumes (hostPath folders and the emptyDir scratch)."""
    data, models = tmp_path / "data", tmp_path / "models"
    write_digits(data, digits=range(5, 10), size=32, seed=0)
    models.mkdir()
    os.chown(models, RUN_AS_USER, RUN_AS_USER)  # the trainer creates the output folder itself
    tj = TransferJob.from_dict(
        {
            "apiVersion": "transferjob.io/v1alpha1",
            "kind": "TransferJob",
            "metadata": {"name": "digits", "namespace": "ml", "uid": "uid-1"},
            "spec": {
                "model": {"base": "MobileNetV2", "weights": "none", "imageSize": 32},
                "data": {"source": {"hostPath": str(data)}, "augmentation": {"enabled": False}},
                "training": {"epochs": 1, "batchSize": 32},
                "output": {"location": {"hostPath": str(models / "digits")}},
            },
        }
    )
    template = build_job(tj)["spec"]["template"]
    pod, container = template["spec"], template["spec"]["containers"][0]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    downward = tmp_path / "downward"
    downward.mkdir()
    (downward / "spec.json").write_text(template["metadata"]["annotations"][SPEC_ANNOTATION])
    termination = tmp_path / "termination-log"
    termination.touch()
    termination.chmod(0o666)  # as the kubelet makes it: writable by the container's user
    mounts = [Mount(TERMINATION_MESSAGE_PATH, termination, read_only=False)]
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            mounts.append(Mount(mount["mountPath"], Path(volume["hostPath"]["path"]), mount["readOnly"]))
        elif "emptyDir" in volume:
            mounts.append(Mount(mount["mountPath"], None, read_only=False))
        else:
            assert "downwardAPI" in volume, f"a volume this test does not know: {volume}"
            mounts.append(Mount(mount["mountPath"], downward, read_only=True))
    security = pod["securityContext"]
    proc = run_in_image(
        project_images.trainer.ref,
        [*container["command"], *container["args"]],
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        env={e["name"]: e["value"] for e in container["env"]},
        mounts=mounts,
        read_only_root=container["securityContext"]["readOnlyRootFilesystem"],
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = decode(termination.read_text())
    assert isinstance(final, Finished), termination.read_text()
    assert final.model.uri.startswith("/output/digits/")
    assert (models / Path(final.model.uri).relative_to("/output")).is_file()
    assert json.loads((models / "digits" / "metrics.json").read_text())


def test_operator_image_runs_the_operator(project_images: ProjectImages) -> None:
    ref = project_images.operator.ref
    proc = run_in_image(ref, ["python", "-c", "import kopf, prometheus_client, transferjob_operator"])
    assert proc.returncode == 0, proc.stderr
    proc = run_in_image(ref, ["tj-operator", "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--all-namespaces" in proc.stdout


def test_pause_image_is_kubernetes_pause(project_images: ProjectImages) -> None:
    proc = run_in_image(project_images.pause.ref, ["/pause", "-v"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pause.c ")
