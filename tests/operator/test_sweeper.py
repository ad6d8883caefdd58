"""The sweep controller's pieces that need no API server: its owner reference and `--controllers`.

The controller itself runs against a real API server in tests/cluster/test_sweep_controller.py; its
decisions are the SDK's `plan_sweep` (tests/unit/test_sweeping.py).
"""

from __future__ import annotations

import pytest

from transferjob_operator.__main__ import main, parse_args
from transferjob_operator.sweeper import owner_reference


def test_a_trial_is_owned_by_its_sweep_as_its_controller() -> None:
    sweep = {"metadata": {"name": "lr", "namespace": "ml", "uid": "u-1"}}
    assert owner_reference(sweep) == {
        "apiVersion": "transferjob.io/v1alpha1",
        "kind": "TransferSweep",
        "name": "lr",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_both_controllers_run_by_default() -> None:
    assert parse_args([]).controllers == "transferjobs,transfersweeps"


def test_an_unknown_controller_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--controllers", "transfersweeps,cronjobs"]) == 2
    assert "transferjobs, transfersweeps" in capsys.readouterr().err
