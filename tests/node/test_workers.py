"""Training across workers on the real node: an Indexed Job of two trainer pods in our image that find
each other through the headless Service and our CoreDNS, each reading its own shard, the chief alone
writing; and a group the node cannot place stays Pending with the scheduler's reason."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.node.test_operator import Jobs, _small_spec
from transferjob.models import DataSpec, Location
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.real import RealCluster, operator_logs
from transferjob_testing.cluster.volumes import hand_to_trainer, share_read_only, static_volume
from transferjob_trainer.layout import scan_layout

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

#: Two workers must reach the single worker's test accuracy within this. They are two different
#: stochastic trainings (other batches, the same global batch); measured on this split at 3 epochs:
#: 1 worker 0.9363, 2 workers 0.8981 (hence 5 epochs here). The trainer tier's
#: `tests/trainer/test_workers.py` compares them on a larger split; here the pods are the question.
TOLERANCE = 0.05

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


@pytest.fixture()
def jobs(in_cluster_operator: RealCluster, real_namespace: str) -> Jobs:
    return Jobs(in_cluster_operator, real_namespace)


def _fine_tuning(workers: int, out: str, batch: int) -> dict[str, Any]:
    spec = _small_spec(
        resources={"workers": workers, "gpus": 1, "cpu": "500m", "memory": "2Gi"},
        runPolicy={"backoffLimit": 0},
    )
    spec["mode"] = "FineTuning"
    spec["model"]["fineTuneAt"] = "conv3"
    spec["training"] = {"epochs": 5, "batchSize": batch, "learningRate": 1e-3, "seed": 0}
    spec["output"]["location"]["pvc"]["subPath"] = out
    return spec


def test_two_workers_fine_tune_as_one_in_our_pods(
    jobs: Jobs, quickstart_datasets: Path, tmp_path: Path
) -> None:
    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "datasets", quickstart_datasets)
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")

    jobs.create("pair", _fine_tuning(2, "pair", 32))
    # Each worker's shard line, read while the pods run: the chief decides success (successPolicy), and
    # a worker still shutting down when the chief has finished is deleted by the Job controller, its
    # log with it (under load, in a parallel fresh-clone run, worker 1 was gone once the job Succeeded).
    core = client.CoreV1Api(jobs.cluster.api)
    found: dict[str, re.Match[str]] = {}

    def both_shards() -> bool:
        for pod in jobs.pods("pair"):
            index = pod.metadata.labels[INDEX_LABEL]
            if index in found or pod.status.phase not in ("Running", "Succeeded"):
                continue
            try:
                log = core.read_namespaced_pod_log(pod.metadata.name, jobs.ns)
            except client.ApiException:
                continue  # not started, or gone
            match = re.search(r"worker (\d) of 2 \((\S+)\): reads (\d+) of (\d+) training", log)
            if match:
                assert pod.spec.hostname == f"pair-{index}" and match[1] == index, (pod.spec.hostname, log)
                found[index] = match
        return len(found) == 2

    wait_for(both_shards, timeout=600, interval=1.0, what="each worker's shard in its log")
    pair = jobs.wait_phase("pair", "Succeeded", timeout=600)
    service = core.read_namespaced_service("pair", jobs.ns)
    assert service.spec.cluster_ip == "None"
    assert service.metadata.owner_references[0].kind == "TransferJob"

    shards = [(found[i][2], int(found[i][3]), int(found[i][4])) for i in ("0", "1")]
    assert [host for host, _, _ in shards] == ["pair-0.pair:2222", "pair-1.pair:2222"]
    total = shards[0][2]
    assert sum(n for _, n, _ in shards) == total and all(n < total for _, n, _ in shards)
    # One merged history: each epoch once, from the chief.
    assert [m["epoch"] for m in pair["history"]] == [1, 2, 3, 4, 5]
    # Worker 1 finished too, or was still shutting down when the chief had succeeded and was stopped.
    workers = [(w["index"], w["phase"]) for w in pair["workers"]]
    assert workers[0] == (0, "Succeeded") and workers[1] in ((1, "Succeeded"), (1, "Removed")), workers
    assert (tmp_path / "models" / "pair" / "model.keras").exists()

    jobs.create("single", _fine_tuning(1, "single", 64))
    single = jobs.wait_phase("single", "Succeeded", timeout=600)
    one, two = single["test"]["accuracy"], pair["test"]["accuracy"]
    print(f"test accuracy: 1 worker (batch 64) {one}, 2 workers (32 each) {two}")
    assert abs(one - two) <= TOLERANCE, (one, two)


def test_a_group_the_node_cannot_place_stays_pending_with_the_reason(
    jobs: Jobs, quickstart_datasets: Path, tmp_path: Path
) -> None:
    """Three workers of 2 GPUs on a node of 4: two start (and wait for the third at the rendezvous), the
    third cannot be placed. The job is Pending with the scheduler's reason, not Running."""
    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "datasets", quickstart_datasets)
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")
    spec = _fine_tuning(3, "too-big", 32)
    spec["resources"] |= {"gpus": 2, "cpu": "100m"}
    jobs.create("too-big", spec)
    cond = jobs.condition("too-big", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond
    status = jobs.status("too-big")
    assert status.get("phase") == "Pending", status
    # A snapshot: the placed workers may still be starting; the unplaced one is Pending for good.
    assert len(status["workers"]) == 3 and "Pending" in {w["phase"] for w in status["workers"]}, status


def test_a_lost_worker_restarts_the_group_from_the_checkpoint(
    jobs: Jobs, quickstart_datasets: Path, tmp_path: Path
) -> None:
    """Worker 1's pod is deleted mid-run: the chief's collectives fail, both are replaced, and the new
    group resumes after the last finished epoch; each epoch is on `.status` once."""
    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "datasets", quickstart_datasets)
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")
    spec = _fine_tuning(2, "lost", 32)
    # Long enough that the group is still training when the deleted pod is gone: an epoch here takes a
    # second or two, and the kubelet stops a deleted pod's container seconds later (at 6 epochs the
    # victim once finished the run before it was stopped, so no worker was replaced).
    spec["training"]["epochs"] = 16
    spec["training"]["earlyStopping"] = {"enabled": False}
    spec["runPolicy"]["backoffLimit"] = 3
    jobs.create("lost", spec)
    wait_for(lambda: (jobs.status("lost").get("epoch") or 0) >= 2, timeout=420, interval=1.0, what="epoch 2")
    core = client.CoreV1Api(jobs.cluster.api)
    victim = next(p for p in jobs.pods("lost") if p.metadata.labels[INDEX_LABEL] == "1")
    core.delete_namespaced_pod(victim.metadata.name, jobs.ns, grace_period_seconds=0)
    done = jobs.wait_phase("lost", "Succeeded", timeout=600)
    assert [m["epoch"] for m in done["history"]] == list(range(1, 17))
    workers = {w["index"]: w for w in done["workers"]}
    if set(workers) != {0, 1}:
        print(jobs.cluster.kubectl("get", "pods", "-n", jobs.ns, "-L", INDEX_LABEL, "-o", "wide").stdout)
        print(operator_logs(jobs.cluster, tail=200))
    assert set(workers) == {0, 1}, done["workers"]
    # The deleted pod is gone (replaced, not listed as failed); the chief failed when its peer vanished.
    assert workers[1]["pod"] != victim.metadata.name, done["workers"]
    assert workers[0]["failures"] >= 1, done["workers"]
    # Worker 1's replacement may still run when the chief succeeds: the Job controller then deletes it
    # (successPolicy). `.status` keeps its place either way, never as running in a finished job.
    assert workers[0]["phase"] == "Succeeded", workers
    assert workers[1]["phase"] not in ("Pending", "Running"), workers
    existing = {p.metadata.name for p in jobs.pods("lost")}
    assert workers[0]["pod"] in existing
    logs = [core.read_namespaced_pod_log(w["pod"], jobs.ns) for w in workers.values() if w["pod"] in existing]
    assert all("resuming after epoch" in log for log in logs), [log[-2000:] for log in logs]


def test_a_permanent_error_on_one_worker_fails_the_group_without_retries(
    jobs: Jobs, quickstart_datasets: Path, tmp_path: Path
) -> None:
    """Worker 1's shard holds a corrupt image (the chief's does not): worker 1 exits with the permanent
    exit code, podFailurePolicy fails the Job at once despite backoffLimit 3, the chief is stopped, and
    the TransferJob fails with worker 1's reason."""
    datasets = tmp_path / "datasets"
    shutil.copytree(quickstart_datasets, datasets)
    train = datasets / "digits-5-9" / "train"
    first_class = sorted(p for p in train.iterdir() if p.is_dir())[0]
    first = sorted(first_class.glob("*.png"))[0]
    corrupt = first.with_name(f"{first.stem}_.png")  # sorts right after `first`: index 1, worker 1's
    corrupt.write_bytes(b"not a png")
    share_read_only(datasets)
    spec_data = DataSpec(source=Location(host_path=str(datasets / "digits-5-9")))
    files = scan_layout(str(datasets / "digits-5-9"), spec_data).train.files
    assert files.index(str(corrupt)) % 2 == 1, "the corrupt image must be in worker 1's shard"

    hand_to_trainer(tmp_path / "models")
    static_volume(jobs.cluster.api, jobs.ns, "datasets", datasets)
    static_volume(jobs.cluster.api, jobs.ns, "models", tmp_path / "models")
    spec = _fine_tuning(2, "bad", 32)
    spec["runPolicy"]["backoffLimit"] = 3
    jobs.create("bad", spec)
    failed = jobs.wait_phase("bad", "Failed", timeout=300)
    reason = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert reason["reason"] == "InvalidData", failed["conditions"]
    assert f"{first.stem}_.png" in reason["message"], reason
    assert not failed.get("restarts"), failed  # no pod was replaced
    workers = {w["index"]: w for w in failed["workers"]}
    assert workers[1]["phase"] == "Failed" and workers[1]["failures"] == 1, failed["workers"]
    assert len(jobs.pods("bad")) == 2, "a retry was started"
