"""Sweeps on the local backend, and `tj sweep` / `tj plot` for a sweep, with the scripted trainer.

What a user would notice: `client.sweep` on the local backend runs the trials here, one at a time,
each a local job in its own output folder, and returns with the best trial recorded; the trials are
the ones the operator would run for the same seed; `tj sweep show` lists them best first; `tj plot`
draws the sweep; `tj sweep delete` removes the trials with it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from transferjob import TransferJob, TransferJobClient
from transferjob.cli import main
from transferjob.constants import LABEL_SWEEP
from transferjob.errors import SpecError, SweepNotFoundError
from transferjob.suggest import suggest
from transferjob.sweeps import TrialPhase


def test_a_local_grid_sweep_runs_every_point_and_records_the_best(
    local_client: TransferJobClient, make_job: Callable[..., TransferJob], tmp_path: Path
) -> None:
    template = make_job(script={"sleep": 0.05}).spec  # without "epochs": it runs training.epochs
    name = local_client.sweep(
        template,
        {"training.epochs": {"categorical": {"values": [1, 3, 2]}}},
        "valAccuracy",
        name="epochs",
        algorithm="Grid",
        max_trials=5,
        parallel_trials=2,
    )
    sweep = local_client.get_sweep(name)
    status = sweep.status
    assert status is not None and status.phase is not None and status.phase.value == "Succeeded"
    assert [t.parameters["training.epochs"] for t in status.trials] == [1, 3, 2]
    assert all(t.phase is TrialPhase.SUCCEEDED for t in status.trials)
    # The scripted trainer's val accuracy is 0.9 - 0.4/epoch: the longest trial is the best.
    assert status.best_trial is not None and status.best_trial.name == "epochs-1"
    assert status.best_trial.objective == max(t.objective or 0 for t in status.trials)
    assert [len(t.curve) for t in status.trials] == [1, 3, 2]
    assert status.best_trial.model is not None
    trial = local_client.get("epochs-1")
    assert trial.metadata.labels[LABEL_SWEEP] == "epochs"
    assert trial.spec.output.location.host_path is not None
    assert trial.spec.output.location.host_path.endswith("/epochs-1")

    out = io.StringIO()
    assert main(["--local", "sweep", "show", "epochs"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epochs: Succeeded, 3 of 5 trials finished; best epochs-1")
    assert lines[1].split() == ["INDEX", "NAME", "PHASE", "TRAINING.EPOCHS", "VALACCURACY", "EPOCHS"]
    assert [line.split()[1] for line in lines[2:]] == ["epochs-1", "epochs-2", "epochs-0"]

    image = tmp_path / "sweep.png"
    assert main(["--local", "plot", "epochs", "-o", str(image)], out=io.StringIO()) == 0
    assert image.stat().st_size > 10_000

    assert main(["--local", "sweep", "delete", "epochs"], out=io.StringIO()) == 0
    assert local_client.list(f"{LABEL_SWEEP}=epochs") == []
    with pytest.raises(SweepNotFoundError):
        local_client.get_sweep("epochs")


def test_a_local_random_sweep_runs_the_trials_the_operator_would(
    local_client: TransferJobClient, make_job: Callable[..., TransferJob]
) -> None:
    name = local_client.sweep(
        make_job(script={"epochs": 1, "sleep": 0.0}).spec,
        {"training.learningRate": {"logUniform": {"min": 1.0e-5, "max": 1.0e-2}}},
        {"metric": "valLoss"},
        name="lr",
        algorithm={"name": "Random", "seed": 7},
        max_trials=2,
    )
    sweep = local_client.get_sweep(name)
    assert sweep.status is not None
    trials = sweep.status.trials
    assert [t.parameters for t in trials] == [suggest(sweep.spec, trials[:n]) for n in range(2)]
    assert (
        local_client.get("lr-1").spec.training.learning_rate == trials[1].parameters["training.learningRate"]
    )


def test_a_local_sweep_cannot_be_suspended(
    local_client: TransferJobClient, make_job: Callable[..., TransferJob]
) -> None:
    from transferjob.sweeps import TransferSweep

    sweep = TransferSweep.model_validate(
        {
            "metadata": {"name": "held"},
            "spec": {
                "template": make_job().spec.to_dict(),
                "parameters": {"training.epochs": {"int": {"min": 1, "max": 3}}},
                "objective": {"metric": "valAccuracy"},
                "suspend": True,
            },
        }
    )
    with pytest.raises(SpecError, match=r"spec\.suspend"):
        local_client.sweep(sweep)
