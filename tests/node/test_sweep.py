"""A TransferSweep on the real node: the operator installed from the manifests runs six fine-tuning
trials on the digits, in our trainer image, two at a time.

What a user would notice: the sweep finishes with the best trial's objective the maximum over its
trials, the median rule stops at least one hopeless trial (a learning rate of 1e-7) before its last
epoch, and deleting the sweep removes its trials. The trials are paced (`paced_spec`: about 1-2 s an
epoch on 2 cores), so the operator sees a trial's epochs while it runs; six trials take a few minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from transferjob import TransferJobClient
from transferjob.backends.kubernetes import KubernetesBackend
from transferjob.constants import GROUP, LABEL_SWEEP, PLURAL, VERSION
from transferjob.sweeps import TrialPhase
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.real import RealCluster, operator_logs
from transferjob_testing.cluster.volumes import hand_to_trainer, static_volume
from transferjob_testing.harness import paced_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EPOCHS = 6
#: Grid order: two good rates first (they set the median), then one more good one and three hopeless ones.
RATES = [0.001, 0.0005, 0.002, 1.0e-7, 2.0e-7, 5.0e-7]


def test_a_six_trial_digits_sweep_stops_the_hopeless_trials_and_ends_with_the_best(
    in_cluster_operator: RealCluster, real_namespace: str, quickstart_datasets: Path, tmp_path: Path
) -> None:
    cluster = in_cluster_operator
    hand_to_trainer(tmp_path / "models")
    static_volume(cluster.api, real_namespace, "datasets", quickstart_datasets)
    static_volume(cluster.api, real_namespace, "models", tmp_path / "models")
    template = paced_spec(
        {"pvc": {"claimName": "datasets", "subPath": "digits-5-9"}},
        {"pvc": {"claimName": "models", "subPath": "sweep"}},
        "/data/source.keras",
        epochs=EPOCHS,
    )
    sdk = TransferJobClient(KubernetesBackend(real_namespace, api_client=cluster.api))
    name = sdk.sweep(
        template,
        {"training.learningRate": {"categorical": {"values": RATES}}},
        "valAccuracy",
        name="digits-lr",
        algorithm="Grid",
        max_trials=6,
        parallel_trials=2,
        max_failed_trials=0,
        early_stopping={"rule": "Median", "minEpochs": 2, "minTrials": 2},
    )
    try:
        sweep = sdk.wait_sweep(name, timeout=600, poll=2.0)
    except Exception:
        print(operator_logs(cluster))
        raise
    status = sweep.status
    assert status is not None and status.best_trial is not None
    succeeded = [t for t in status.trials if t.phase is TrialPhase.SUCCEEDED]
    stopped = [t for t in status.trials if t.phase is TrialPhase.STOPPED]
    assert len(status.trials) == 6 and status.failed_trials == 0, status.trials
    assert status.best_trial.objective == max(t.objective or 0.0 for t in succeeded)
    assert status.best_trial.model is not None and status.best_trial.name in status.best_trial.model.uri
    assert stopped, [(t.name, t.phase, t.curve) for t in status.trials]
    assert all((t.epochs or 0) < EPOCHS for t in stopped), [(t.name, t.epochs) for t in stopped]
    assert all(float(t.parameters["training.learningRate"]) < 1.0e-6 for t in stopped)

    custom: Any = client.CustomObjectsApi(cluster.api)

    def trials() -> list[str]:
        items = custom.list_namespaced_custom_object(
            GROUP, VERSION, real_namespace, PLURAL, label_selector=f"{LABEL_SWEEP}={name}"
        )["items"]
        return [item["metadata"]["name"] for item in items]

    assert trials(), "the succeeded trials' TransferJobs stay while the sweep does"
    sdk.delete_sweep(name)
    wait_for(lambda: not trials(), timeout=120, interval=1.0, what="the sweep's trials to be deleted")
