"""One step of a sweep (`plan_sweep`): what the operator and a local sweep do, decided without a cluster.

What a user would notice: trials start at most parallelTrials at a time, each is recorded before it
exists, an operator that dies between the two neither loses nor duplicates a trial, suspend suspends,
a failure is counted against the budget, an unpromising trial is stopped (not failed), a grid ends
when exhausted, and the best trial is the succeeded one with the best objective.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from tests.cluster.admission import SWEEP_SPEC, merged
from transferjob.constants import LABEL_KUEUE_QUEUE, LABEL_SWEEP, LABEL_TRIAL
from transferjob.models import Condition, EpochMetrics, ModelArtifacts, Phase, TransferJob, TransferJobStatus
from transferjob.sweeping import SweepPlan, plan_sweep
from transferjob.sweeps import TransferSweep, TrialPhase

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def make_sweep(labels: dict[str, str] | None = None, **changes: Any) -> TransferSweep:
    """The admission tests' valid sweep with `changes` merged in; `parameters` replaces the space."""
    spec = merged(SWEEP_SPEC, {k: v for k, v in changes.items() if k != "parameters"})
    spec["parameters"] = changes.get("parameters", spec["parameters"])
    return TransferSweep.from_dict(
        {
            "metadata": {
                "name": "lr",
                "namespace": "ml",
                "uid": "sweep-uid",
                "generation": 1,
                "labels": labels or {},
            },
            "spec": spec,
        }
    )


class World:
    """A sweep and its trial TransferJobs; `step` applies a plan as the operator does."""

    def __init__(self, sweep: TransferSweep) -> None:
        self.sweep = sweep
        self.children: dict[str, TransferJob] = {}
        self.created: list[str] = []

    def plan(self) -> SweepPlan:
        return plan_sweep(self.sweep, self.children, NOW)

    def step(self, create: bool = True) -> SweepPlan:
        plan = self.plan()
        self.sweep = self.sweep.model_copy(update={"status": plan.status})
        for name in plan.delete:
            self.children.pop(name, None)
        if create:
            for job in plan.create:
                assert job.metadata.name not in self.children
                self.children[job.metadata.name or ""] = job
                self.created.append(job.metadata.name or "")
        for name, suspend in plan.suspend.items():
            child = self.children[name]
            spec = child.spec.model_copy(
                update={"run_policy": child.spec.run_policy.model_copy(update={"suspend": suspend})}
            )
            self.children[name] = child.model_copy(update={"spec": spec})
        return plan

    def report(self, name: str, phase: Phase, curve: list[float], **status: Any) -> None:
        """The TransferJob controller's part: the trial's status, its val accuracy per epoch."""
        history = [EpochMetrics(epoch=i + 1, val_accuracy=v) for i, v in enumerate(curve)]
        self.children[name] = self.children[name].model_copy(
            update={
                "status": TransferJobStatus(
                    phase=phase,
                    epoch=len(curve) or None,
                    history=history,
                    metrics=history[-1] if history else None,
                    **status,
                )
            }
        )

    def succeed(self, name: str, curve: list[float]) -> None:
        self.report(
            name, Phase.SUCCEEDED, curve, model=ModelArtifacts(uri=f"pvc://models/{name}/model.keras")
        )

    def trials(self) -> dict[str, TrialPhase]:
        assert self.sweep.status is not None
        return {t.name: t.phase for t in self.sweep.status.trials}


def test_the_first_step_records_parallel_trials_and_creates_them_labelled_in_their_own_folders() -> None:
    world = World(make_sweep())
    plan = world.step()
    assert [t.name for t in plan.status.trials] == ["lr-0", "lr-1"]
    assert all(t.phase is TrialPhase.PENDING and t.parameters for t in plan.status.trials)
    assert [j.metadata.name for j in plan.create] == ["lr-0", "lr-1"]
    job = plan.create[1]
    assert job.metadata.labels == {LABEL_SWEEP: "lr", LABEL_TRIAL: "1"}
    assert job.metadata.namespace == "ml"
    assert job.spec.output.location.pvc is not None and job.spec.output.location.pvc.sub_path == "lr-1"
    assert job.spec.training.learning_rate == plan.status.trials[1].parameters["training.learningRate"]
    assert plan.status.phase is Phase.PENDING and plan.status.running_trials == 2
    assert plan.status.start_time == NOW


def test_a_restart_between_recording_and_creating_creates_the_same_trials_once() -> None:
    world = World(make_sweep())
    first = world.step(create=False)  # status written, then the operator died
    again = world.step()  # a new process: same status, no children
    assert [t.model_dump() for t in again.status.trials] == [t.model_dump() for t in first.status.trials]
    assert [j.model_dump() for j in again.create] == [j.model_dump() for j in first.create]
    # Next step: both exist (adopted when a create had gone through), nothing is created or recorded anew.
    third = world.step()
    assert third.create == [] and len(third.status.trials) == 2
    assert world.created == ["lr-0", "lr-1"]


def test_one_child_created_before_the_crash_is_adopted_and_only_the_other_created() -> None:
    world = World(make_sweep())
    plan = world.step(create=False)
    world.children["lr-0"] = plan.create[0]
    again = world.plan()
    assert [j.metadata.name for j in again.create] == ["lr-1"]


def test_parallelism_one_new_trial_per_finished_one() -> None:
    world = World(make_sweep())
    world.step()
    world.report("lr-0", Phase.RUNNING, [0.5])
    world.report("lr-1", Phase.RUNNING, [0.6])
    assert world.step().create == []
    world.succeed("lr-0", [0.5, 0.7])
    plan = world.step()
    assert [j.metadata.name for j in plan.create] == ["lr-2"]
    assert world.trials() == {
        "lr-0": TrialPhase.SUCCEEDED,
        "lr-1": TrialPhase.RUNNING,
        "lr-2": TrialPhase.PENDING,
    }
    assert plan.status.phase is Phase.RUNNING
    assert [e.reason for e in plan.events] == ["TrialSucceeded"]


def test_raising_parallel_trials_starts_more() -> None:
    world = World(make_sweep())
    world.step()
    world.sweep = world.sweep.model_copy(
        update={"spec": world.sweep.spec.model_copy(update={"parallel_trials": 4})}
    )
    assert [j.metadata.name for j in world.step().create] == ["lr-2", "lr-3"]


def test_suspend_starts_nothing_and_suspends_the_running_trials_then_resumes_them() -> None:
    world = World(make_sweep())
    world.step()
    world.report("lr-0", Phase.RUNNING, [0.5])
    world.succeed("lr-1", [0.6])
    world.sweep = world.sweep.model_copy(
        update={"spec": world.sweep.spec.model_copy(update={"suspend": True})}
    )
    plan = world.step()
    assert plan.create == [] and plan.suspend == {"lr-0": True}
    assert plan.status.phase is Phase.SUSPENDED and len(plan.status.trials) == 2
    assert {c.type: c.status for c in plan.status.conditions}["Suspended"] == "True"
    world.sweep = world.sweep.model_copy(
        update={"spec": world.sweep.spec.model_copy(update={"suspend": False})}
    )
    plan = world.step()
    assert plan.suspend == {"lr-0": False}
    assert [j.metadata.name for j in plan.create] == ["lr-2"]
    assert {c.type: c.status for c in plan.status.conditions}["Suspended"] == "False"


def test_a_failed_trial_is_recorded_and_the_sweep_goes_on_until_the_budget_is_spent() -> None:
    world = World(make_sweep(maxFailedTrials=1))
    world.step()
    world.report(
        "lr-0",
        Phase.FAILED,
        [],
        conditions=[Condition(type="Failed", status="True", reason="OOMKilled", message="out of memory")],
    )
    plan = world.step()
    assert plan.status.trials[0].phase is TrialPhase.FAILED
    assert plan.status.trials[0].message == "OOMKilled: out of memory"
    assert plan.status.failed_trials == 1 and plan.status.phase is not Phase.FAILED
    assert [j.metadata.name for j in plan.create] == ["lr-2"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "TrialFailed")]
    world.report("lr-2", Phase.FAILED, [])
    plan = world.step()
    assert plan.status.phase is Phase.FAILED
    assert world.trials() == {
        "lr-0": TrialPhase.FAILED,
        "lr-1": TrialPhase.STOPPED,
        "lr-2": TrialPhase.FAILED,
    }
    assert plan.delete == ["lr-1"] and plan.create == []
    assert plan.events[-1].reason == "SweepFailed" and "maxFailedTrials" in plan.events[-1].message
    assert plan.status.completion_time == NOW
    assert world.plan().events == []  # finished: nothing more happens


def test_a_trial_behind_the_median_is_stopped_not_failed() -> None:
    world = World(
        make_sweep(
            maxTrials=5, parallelTrials=1, earlyStopping={"rule": "Median", "minEpochs": 2, "minTrials": 3}
        )
    )
    for n in range(3):
        world.step()
        world.succeed(f"lr-{n}", [0.8, 0.85, 0.9])
    world.step()
    world.report("lr-3", Phase.RUNNING, [0.3])  # one epoch: minEpochs not reached
    assert world.step().delete == []
    world.report("lr-3", Phase.RUNNING, [0.3, 0.4])
    plan = world.step()
    trial = plan.status.trials[3]
    assert trial.phase is TrialPhase.STOPPED and "median" in trial.message and trial.curve == [0.3, 0.4]
    assert plan.delete == ["lr-3"] and plan.status.failed_trials == 0
    assert [e.reason for e in plan.events] == ["TrialStopped"]
    assert [j.metadata.name for j in plan.create] == ["lr-4"]


def test_a_trial_doing_well_is_not_stopped() -> None:
    world = World(make_sweep(maxTrials=4, parallelTrials=1, earlyStopping={"rule": "Median", "minTrials": 3}))
    for n in range(3):
        world.step()
        world.succeed(f"lr-{n}", [0.5, 0.6])
    world.step()
    world.report("lr-3", Phase.RUNNING, [0.6, 0.7])
    assert world.step().status.trials[3].phase is TrialPhase.RUNNING


def test_a_grid_ends_when_exhausted_and_the_best_trial_is_the_best_objective() -> None:
    values = [1.0e-4, 1.0e-3, 1.0e-2]
    world = World(
        make_sweep(
            parameters={"training.learningRate": {"categorical": {"values": values}}},
            algorithm={"name": "Grid"},
            maxTrials=6,
            parallelTrials=2,
        )
    )
    objectives = {"lr-0": 0.7, "lr-1": 0.9, "lr-2": 0.8}
    for _ in range(5):
        world.step()
        for name, job in list(world.children.items()):
            if job.status is None:
                world.succeed(name, [objectives[name] - 0.1, objectives[name]])
    status = world.sweep.status
    assert status is not None and status.phase is Phase.SUCCEEDED
    assert [t.parameters["training.learningRate"] for t in status.trials] == values
    assert status.best_trial is not None
    assert status.best_trial.name == "lr-1"
    assert status.best_trial.objective == max(t.objective or 0 for t in status.trials)
    assert (
        status.best_trial.model is not None and status.best_trial.model.uri == "pvc://models/lr-1/model.keras"
    )
    assert status.finished_trials == 3 and status.running_trials == 0
    assert {c.type: c.status for c in status.conditions} == {"Succeeded": "True"}


def test_a_sweep_that_ends_without_a_success_fails() -> None:
    world = World(make_sweep(maxTrials=2, maxFailedTrials=5))
    world.step()
    world.report("lr-0", Phase.FAILED, [])
    world.report("lr-1", Phase.FAILED, [])
    plan = world.step()
    assert plan.status.phase is Phase.FAILED
    assert plan.status.conditions[-1].reason == "NoTrialSucceeded"


def test_a_combination_that_makes_no_valid_job_fails_that_trial_only() -> None:
    world = World(
        make_sweep(
            template={"model": {"base": "MobileNetV2"}},
            parameters={"model.imageSize": {"categorical": {"values": [100, 160]}}},
            algorithm={"name": "Grid"},
            maxFailedTrials=1,
        )
    )
    plan = world.step()
    assert plan.status.trials[0].phase is TrialPhase.FAILED
    assert "spec.parameters.model.imageSize" in plan.status.trials[0].message
    assert [j.metadata.name for j in plan.create] == ["lr-1"]


def test_a_running_trial_whose_job_vanished_failed_and_a_taken_name_fails_its_trial() -> None:
    world = World(make_sweep())
    world.step()
    world.report("lr-0", Phase.RUNNING, [0.5])
    world.step()
    del world.children["lr-0"]
    plan = plan_sweep(world.sweep, {}, NOW, {"lr-1": "TransferJob lr-1 exists and is not this sweep's trial"})
    assert plan.status.trials[0].phase is TrialPhase.FAILED and "deleted" in plan.status.trials[0].message
    assert (
        plan.status.trials[1].phase is TrialPhase.FAILED and "not this sweep" in plan.status.trials[1].message
    )


def test_trials_inherit_the_sweeps_kueue_queue() -> None:
    plan = World(make_sweep(labels={LABEL_KUEUE_QUEUE: "gpus"})).step()
    assert all(j.metadata.labels[LABEL_KUEUE_QUEUE] == "gpus" for j in plan.create)


@pytest.mark.parametrize("seed", range(20))
def test_crashes_at_any_step_never_lose_duplicate_or_change_a_trial(seed: int) -> None:
    """A TPE sweep where the operator dies after writing the status (its creates lost) at random
    steps, and trials finish, fail or run on at random: every trial is created once, as recorded."""
    rng = random.Random(seed)
    world = World(
        make_sweep(
            algorithm={"name": "TPE", "seed": seed},
            maxTrials=8,
            parallelTrials=3,
            maxFailedTrials=8,
            earlyStopping={"rule": "Median", "minTrials": 2},
        )
    )
    for _ in range(200):
        plan = world.step(create=rng.random() < 0.6)
        if plan.finished:
            break
        for name, job in list(world.children.items()):
            done = job.status is not None and job.status.phase in (Phase.SUCCEEDED, Phase.FAILED)
            roll = rng.random()
            if done or roll < 0.4:
                continue
            epochs = len(job.status.history) + 1 if job.status is not None else 1
            curve = [rng.uniform(0.1, 0.9) for _ in range(epochs)]
            if roll < 0.6:
                world.report(name, Phase.RUNNING, curve)
            elif roll < 0.9:
                world.succeed(name, curve)
            else:
                world.report(name, Phase.FAILED, curve)
    status = world.sweep.status
    assert status is not None and status.phase in (Phase.SUCCEEDED, Phase.FAILED)
    assert [t.index for t in status.trials] == list(range(8))
    assert sorted(world.created) == sorted(set(world.created))  # none created twice
    recorded = {t.name: t for t in status.trials}
    for name, job in world.children.items():
        assert job.spec.training.learning_rate == recorded[name].parameters["training.learningRate"]
