"""The sweep controller against a real API server (etcd, kube-apiserver, kube-controller-manager), no node.

The operator runs as a subprocess with its ServiceAccount's RBAC and only its sweep controller
(`--controllers transfersweeps`): no training Job is ever created, and the test plays the TransferJob
controller's part by writing each trial's `.status` as the real one would (phase, per-epoch history,
model). What a user would notice: trials are created owned and labelled, at most parallelTrials at a
time; the sweep records them, stops a trial behind the median, counts a failure, and ends with the
best trial; a SIGKILLed operator neither loses nor duplicates a trial; suspending suspends the trials;
deleting the sweep deletes them (the control plane runs kube-controller-manager, so its garbage
collector).
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from transferjob import TransferJobClient
from transferjob.backends.kubernetes import KubernetesBackend
from transferjob.cli import main
from transferjob.constants import GROUP, LABEL_SWEEP, LABEL_TRIAL, PLURAL, SWEEP_PLURAL, VERSION
from transferjob.errors import SpecError, SweepNotFoundError
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.harness import OperatorProcess, serving_operator

pytestmark = [pytest.mark.timeout(300)]

TEMPLATE: dict[str, Any] = {
    "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "digits"}}},
    "output": {"location": {"pvc": {"claimName": "models", "subPath": "search"}}},
    "training": {"epochs": 3},
}


@pytest.fixture(scope="module")
def operator(
    api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    root = tmp_path_factory.mktemp("sweep-operator")
    args = ("--controllers", "transfersweeps")
    with serving_operator(api_client, kubeconfig, root, args, namespaces=("tj-test-*",)) as process:
        yield process


class Sweeps:
    """The test's reads and writes in one namespace, and the TransferJob controller's part."""

    def __init__(self, api: client.ApiClient, namespace: str, operator: OperatorProcess) -> None:
        self.ns = namespace
        self.custom: Any = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.operator = operator

    def create(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TransferSweep",
            "metadata": {"name": name},
            "spec": {
                "template": TEMPLATE,
                "parameters": {"training.learningRate": {"logUniform": {"min": 1.0e-5, "max": 1.0e-2}}},
                "objective": {"metric": "valAccuracy"},
                "algorithm": {"name": "Random", "seed": 3},
                **spec,
            },
        }
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, SWEEP_PLURAL, body))

    def sweep(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, SWEEP_PLURAL, name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.sweep(name).get("status") or {})

    def trials(self, name: str) -> dict[str, dict[str, Any]]:
        """The sweep's trial TransferJobs, by name."""
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, label_selector=f"{LABEL_SWEEP}={name}"
        )["items"]
        return {item["metadata"]["name"]: item for item in items}

    def wait(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        try:
            return wait_for(check, timeout=timeout, interval=0.2, what=what)
        except AssertionError:
            print(self.operator.tail())
            raise

    def wait_trials(self, name: str, names: set[str]) -> dict[str, dict[str, Any]]:
        def exactly() -> dict[str, dict[str, Any]] | None:
            trials = self.trials(name)
            return trials if set(trials) == names else None

        return self.wait(f"trials {sorted(names)}", exactly)

    def recorded(self, name: str) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in self.status(name).get("trials") or []}

    def wait_recorded(self, name: str, trial: str, phase: str) -> dict[str, Any]:
        return self.wait(
            f"trial {trial} {phase}",
            lambda: (t := self.recorded(name).get(trial)) and t["phase"] == phase and t,
        )

    def report(self, trial: str, phase: str, curve: list[float], **extra: Any) -> None:
        """Write the trial's `.status` as the TransferJob controller would."""
        history = [{"epoch": i + 1, "valAccuracy": v} for i, v in enumerate(curve)]
        status: dict[str, Any] = {"phase": phase}
        if curve:
            status |= {"epoch": len(curve), "epochs": 3, "history": history, "metrics": history[-1]}
        if phase == "Succeeded":
            status["model"] = {"uri": f"pvc://models/search/{trial}/model.keras"}
        if phase == "Failed":
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            condition = {"type": "Failed", "status": "True", "reason": "OOMKilled", "lastTransitionTime": now}
            status["conditions"] = [{**condition, "message": "the trainer ran out of memory"}]
        status |= extra
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, PLURAL, trial, {"status": status}
        )

    def reasons(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [e.reason or "" for e in events]


@pytest.fixture()
def sweeps(api_client: client.ApiClient, namespace: str, operator: OperatorProcess) -> Sweeps:
    return Sweeps(api_client, namespace, operator)


def test_a_sweep_runs_its_trials_stops_one_counts_a_failure_and_ends_with_the_best(sweeps: Sweeps) -> None:
    sweep = sweeps.create(
        "lr",
        maxTrials=5,
        parallelTrials=2,
        maxFailedTrials=1,
        earlyStopping={"rule": "Median", "minEpochs": 2, "minTrials": 2},
    )
    trials = sweeps.wait_trials("lr", {"lr-0", "lr-1"})
    owner = trials["lr-0"]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "TransferSweep",
        sweep["metadata"]["uid"],
        True,
    )
    assert trials["lr-1"]["metadata"]["labels"] == {LABEL_SWEEP: "lr", LABEL_TRIAL: "1"}
    assert trials["lr-1"]["spec"]["output"]["location"]["pvc"]["subPath"] == "search/lr-1"
    recorded = sweeps.recorded("lr")
    assert (
        trials["lr-1"]["spec"]["training"]["learningRate"]
        == recorded["lr-1"]["parameters"]["training.learningRate"]
    )

    sweeps.report("lr-0", "Running", [0.6])
    sweeps.wait_recorded("lr", "lr-0", "Running")
    assert sweeps.status("lr")["phase"] == "Running"
    sweeps.report("lr-0", "Succeeded", [0.6, 0.8, 0.85])
    sweeps.report("lr-1", "Succeeded", [0.7, 0.9, 0.92])
    sweeps.wait_trials("lr", {"lr-0", "lr-1", "lr-2", "lr-3"})

    sweeps.report("lr-2", "Running", [0.1, 0.2])  # behind the median of lr-0 and lr-1 after 2 epochs
    stopped = sweeps.wait_recorded("lr", "lr-2", "Stopped")
    assert stopped["curve"] == [0.1, 0.2] and stopped["epochs"] == 2
    sweeps.report("lr-3", "Failed", [0.5])
    sweeps.wait_recorded("lr", "lr-3", "Failed")
    # lr-2 is deleted (stopped), lr-4 takes a free slot.
    sweeps.wait_trials("lr", {"lr-0", "lr-1", "lr-3", "lr-4"})
    sweeps.report("lr-4", "Succeeded", [0.8, 0.95, 0.97])

    status = sweeps.wait(
        "the sweep to succeed", lambda: (s := sweeps.status("lr")).get("phase") == "Succeeded" and s
    )
    objectives = [t["objective"] for t in status["trials"] if t["phase"] == "Succeeded"]
    assert status["bestTrial"]["name"] == "lr-4"
    assert status["bestTrial"]["objective"] == max(objectives) == 0.97
    assert status["bestTrial"]["model"]["uri"] == "pvc://models/search/lr-4/model.keras"
    assert (status["finishedTrials"], status["failedTrials"], status["runningTrials"]) == (5, 1, 0)
    assert "OOMKilled" in sweeps.recorded("lr")["lr-3"]["message"]
    sweeps.wait("the SweepSucceeded Event", lambda: "SweepSucceeded" in sweeps.reasons("lr"))
    reasons = sweeps.reasons("lr")
    assert {"TrialCreated", "TrialSucceeded", "TrialStopped", "TrialFailed"} <= set(reasons)
    assert reasons.count("TrialCreated") == 5


def test_sigkilling_the_operator_mid_sweep_loses_and_duplicates_no_trial(sweeps: Sweeps) -> None:
    sweeps.create("kill", maxTrials=8, parallelTrials=4)
    uids: dict[str, str] = {}
    for delay in (0.0, 0.3, 0.6, 1.0):
        time.sleep(delay)
        process = sweeps.operator.proc
        assert process is not None
        process.kill()  # SIGKILL: no clean-up, whatever the operator was doing
        process.wait()
        sweeps.operator.start()
        for name, trial in sweeps.trials("kill").items():
            assert uids.setdefault(name, trial["metadata"]["uid"]) == trial["metadata"]["uid"], (
                f"{name} re-created"
            )
            if trial.get("status") is None:
                sweeps.report(name, "Succeeded", [0.5, 0.6, 0.5 + int(name.split("-")[1]) / 100])
    deadline = time.monotonic() + 60
    while (status := sweeps.status("kill")).get("phase") != "Succeeded":
        for name, trial in sweeps.trials("kill").items():
            assert uids.setdefault(name, trial["metadata"]["uid"]) == trial["metadata"]["uid"], (
                f"{name} re-created"
            )
            if not trial.get("status"):
                sweeps.report(name, "Succeeded", [0.5, 0.6, 0.5 + int(name.split("-")[1]) / 100])
        time.sleep(0.3)
        assert time.monotonic() < deadline, f"the sweep did not finish: {status}\n{sweeps.operator.tail()}"
    recorded = {t["name"]: t for t in status["trials"]}
    assert [t["index"] for t in status["trials"]] == list(range(8))
    trials = sweeps.trials("kill")
    assert set(trials) == set(recorded) == {f"kill-{n}" for n in range(8)}
    for name, trial in trials.items():
        assert (
            trial["spec"]["training"]["learningRate"] == recorded[name]["parameters"]["training.learningRate"]
        )
    # Events are best effort: a SIGKILL between creating a trial and posting its Event loses the Event
    # (the trial itself is found again, above). None is posted twice, and at most one lost per kill.
    created = sweeps.reasons("kill").count("TrialCreated")
    assert 8 - 4 <= created <= 8, created
    assert status["bestTrial"]["name"] == "kill-7"


def test_suspending_the_sweep_suspends_its_trials_and_starts_none(sweeps: Sweeps) -> None:
    sweeps.create("pause", maxTrials=4, parallelTrials=2)
    sweeps.wait_trials("pause", {"pause-0", "pause-1"})
    sweeps.custom.patch_namespaced_custom_object(
        GROUP, VERSION, sweeps.ns, SWEEP_PLURAL, "pause", {"spec": {"suspend": True}}
    )

    def suspended() -> bool:
        trials = sweeps.trials("pause").values()
        return all(t["spec"].get("runPolicy", {}).get("suspend") for t in trials)

    sweeps.wait("the trials to be suspended", suspended)
    sweeps.wait("the sweep to be Suspended", lambda: sweeps.status("pause").get("phase") == "Suspended")
    sweeps.report("pause-0", "Succeeded", [0.5, 0.6, 0.7])
    sweeps.wait_recorded("pause", "pause-0", "Succeeded")
    time.sleep(2)
    assert set(sweeps.trials("pause")) == {"pause-0", "pause-1"}  # no new trial while suspended
    sweeps.custom.patch_namespaced_custom_object(
        GROUP, VERSION, sweeps.ns, SWEEP_PLURAL, "pause", {"spec": {"suspend": False}}
    )
    trials = sweeps.wait_trials("pause", {"pause-0", "pause-1", "pause-2"})
    assert not trials["pause-1"]["spec"]["runPolicy"]["suspend"]


def test_deleting_the_sweep_deletes_its_trials(sweeps: Sweeps) -> None:
    sweeps.create("gone", maxTrials=3, parallelTrials=3)
    sweeps.wait_trials("gone", {"gone-0", "gone-1", "gone-2"})
    sweeps.custom.delete_namespaced_custom_object(GROUP, VERSION, sweeps.ns, SWEEP_PLURAL, "gone")
    sweeps.wait("the garbage collector to delete the trials", lambda: not sweeps.trials("gone"), timeout=60)


def test_the_sdk_and_cli_create_follow_show_and_delete_a_sweep(
    sweeps: Sweeps, api_client: client.ApiClient, kubeconfig: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TransferSweep",
                "metadata": {"name": "cli"},
                "spec": {
                    "template": TEMPLATE,
                    "parameters": {"training.batchSize": {"categorical": {"values": [16, 32]}}},
                    "objective": {"metric": "valLoss"},
                    "algorithm": {"name": "Grid"},
                    "parallelTrials": 2,
                },
            }
        )
    )
    cli = ["--kubeconfig", str(kubeconfig), "-n", sweeps.ns]
    out = io.StringIO()
    assert main(["sweep", "-f", str(manifest), *cli], out=out) == 0
    assert out.getvalue() == "cli\n"
    sweeps.wait_trials("cli", {"cli-0", "cli-1"})
    sweeps.report("cli-0", "Succeeded", [0.5, 0.4, 0.3], metrics={"epoch": 3, "valLoss": 0.3})
    best_model = {
        "uri": "pvc://models/search/cli-1/model.keras",
        "savedModelUri": "pvc://models/search/cli-1/saved_model",
    }
    sweeps.report(
        "cli-1", "Succeeded", [0.5, 0.4, 0.2], metrics={"epoch": 3, "valLoss": 0.2}, model=best_model
    )

    sdk = TransferJobClient(KubernetesBackend(sweeps.ns, api_client=api_client))
    done = sdk.wait_sweep("cli", timeout=30, poll=0.2)
    assert done.status is not None and done.status.best_trial is not None
    assert done.status.best_trial.name == "cli-1"  # the lower valLoss
    out = io.StringIO()
    assert main(["sweep", "show", "cli", *cli], out=out) == 0
    rows = [line.split() for line in out.getvalue().splitlines()]
    assert rows[1] == ["INDEX", "NAME", "PHASE", "TRAINING.BATCHSIZE", "VALLOSS", "EPOCHS"]
    assert rows[2:] == [
        ["1", "cli-1", "Succeeded", "32", "0.2000", "3"],
        ["0", "cli-0", "Succeeded", "16", "0.3000", "3"],
    ]
    served = sdk.serve("cli")  # a sweep: its best trial's model
    assert served["metadata"]["name"] == "cli-1"
    assert served["spec"]["predictor"]["model"]["storageUri"] == "pvc://models/search/cli-1/saved_model"
    assert main(["sweep", "delete", "cli", *cli], out=io.StringIO()) == 0
    with pytest.raises(SweepNotFoundError):
        sdk.get_sweep("cli")
    sweeps.wait("the garbage collector to delete the trials", lambda: not sweeps.trials("cli"), timeout=60)


def test_client_sweep_builds_the_sweep_from_its_parts(sweeps: Sweeps, api_client: client.ApiClient) -> None:
    sdk = TransferJobClient(KubernetesBackend(sweeps.ns, api_client=api_client))
    name = sdk.sweep(
        TEMPLATE,
        {"model.head.dropout": {"uniform": {"min": 0.0, "max": 0.5}}},
        "valAccuracy",
        name="parts",
        algorithm={"name": "TPE", "seed": 1},
        max_trials=3,
        early_stopping={"rule": "Median"},
    )
    sweeps.wait_trials(name, {"parts-0"})
    stored = sdk.get_sweep(name)
    assert stored.spec.algorithm.name.value == "TPE" and stored.spec.max_trials == 3
    with pytest.raises(SpecError, match=r"spec\.parallelTrials"):
        sdk.sweep(
            TEMPLATE,
            {"training.epochs": {"int": {"min": 1, "max": 3}}},
            "loss",
            name="bad",
            parallel_trials=4,
            max_trials=2,
        )
