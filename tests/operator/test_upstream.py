"""`upstream_gate`: a `fromJob` waits, fails clearly, or starts from the exported model."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.operator.conftest import make_tj
from transferjob.models import Phase, TransferJob
from transferjob_operator.jobs import UpstreamModel
from transferjob_operator.status import Gate
from transferjob_operator.upstream import upstream_gate

CREATED = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def _fine_tuning() -> TransferJob:
    return make_tj(
        {
            "mode": "FineTuning",
            "model": {"fromJob": "features"},
            "data": {"source": {"hostPath": "/d"}},
            "output": {"location": {"hostPath": "/o/ft"}},
        },
        name="finetune",
    )


def _upstream(phase: str | None, **status: Any) -> dict[str, Any]:
    return {
        "spec": {"output": {"location": {"pvc": {"claimName": "models", "subPath": "features"}}}},
        "status": {"phase": phase, **status} if phase else {},
    }


def test_without_from_job_nothing_to_wait_for(tj: TransferJob) -> None:
    assert upstream_gate(tj, None, CREATED) is None


def test_waits_while_upstream_runs() -> None:
    gate = upstream_gate(_fine_tuning(), _upstream("Running"), CREATED + dt.timedelta(hours=5))
    assert gate == Gate(
        Phase.PENDING, "WaitingForJob", "WaitingForJob", "waiting for TransferJob features (Running)"
    )


def test_missing_upstream_waits_then_fails() -> None:
    tj = _fine_tuning()
    waiting = upstream_gate(tj, None, CREATED + dt.timedelta(seconds=30), timeout=60)
    assert isinstance(waiting, Gate) and waiting.phase is Phase.PENDING
    assert waiting.reason == "UpstreamNotFound"
    failed = upstream_gate(tj, None, CREATED + dt.timedelta(seconds=61), timeout=60)
    assert isinstance(failed, Gate)
    assert (failed.phase, failed.reason) == (Phase.FAILED, "UpstreamNotFound")
    assert "features" in failed.message


def test_failed_upstream_fails_with_its_reason() -> None:
    upstream = _upstream(
        "Failed",
        conditions=[{"type": "Failed", "status": "True", "reason": "InvalidData", "message": "no images"}],
    )
    gate = upstream_gate(_fine_tuning(), upstream, CREATED)
    assert isinstance(gate, Gate)
    assert (gate.phase, gate.reason) == (Phase.FAILED, "UpstreamFailed")
    assert "InvalidData: no images" in gate.message


def test_succeeded_upstream_without_model_fails() -> None:
    gate = upstream_gate(_fine_tuning(), _upstream("Succeeded"), CREATED)
    assert isinstance(gate, Gate) and gate.reason == "UpstreamHasNoModel"


def test_succeeded_upstream_gives_its_model() -> None:
    upstream = _upstream("Succeeded", model={"uri": "/output/features/model.keras"})
    model = upstream_gate(_fine_tuning(), upstream, CREATED)
    assert isinstance(model, UpstreamModel)
    assert model.path == "model.keras"
    assert model.location.pvc is not None and model.location.pvc.claim_name == "models"
