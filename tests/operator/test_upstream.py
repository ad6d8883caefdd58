"""`upstream_gate`: a `fromJob` waits, fails clearly, or starts from the exported model."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.operator.conftest import make_tj
from transferjob.models import Phase, TransferJob
from transferjob_operator.jobs import UpstreamModel
from transferjob_operator.status import Gate
from transferjob_operator.upstream import cycle_gate, from_job_cycle, upstream_gate

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


def _store(**from_jobs: str | None) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Stored TransferJobs of namespace `ml` by name -> their `fromJob` (None: none)."""
    return {
        ("ml", name): {"spec": {"model": {"fromJob": source} if source else {}}, "status": {}}
        for name, source in from_jobs.items()
    }


def test_from_job_cycles_are_named_from_each_member() -> None:
    assert from_job_cycle(("ml", "a"), _store(a="a")) == ["a", "a"]
    pair = _store(a="b", b="a")
    assert from_job_cycle(("ml", "a"), pair) == ["a", "b", "a"]
    assert from_job_cycle(("ml", "b"), pair) == ["b", "a", "b"]
    triple = _store(a="b", b="c", c="a")
    assert [from_job_cycle(("ml", n), triple) for n in "abc"] == [
        ["a", "b", "c", "a"],
        ["b", "c", "a", "b"],
        ["c", "a", "b", "c"],
    ]
    gate = cycle_gate(["a", "b", "a"])
    assert (gate.phase, gate.reason) == (Phase.FAILED, "FromJobCycle")
    assert gate.message.startswith("model.fromJob forms a cycle: a -> b -> a; ")


def test_chains_without_a_loop_are_not_cycles() -> None:
    assert from_job_cycle(("ml", "a"), _store(a="b", b=None)) is None  # ends at a plain job
    assert from_job_cycle(("ml", "a"), _store(a="b")) is None  # ends at a missing one
    # Leads into a loop without being in it: it fails with UpstreamFailed once b does.
    assert from_job_cycle(("ml", "a"), _store(a="b", b="c", c="b")) is None
    assert from_job_cycle(("ml", "b"), _store(a="b", b="c", c="b")) == ["b", "c", "b"]
    assert from_job_cycle(("ml", "a"), {**_store(a="b"), ("other", "b"): _store(b="a")[("ml", "b")]}) is None


def test_a_succeeded_upstream_grounds_the_chain_a_failed_member_does_not() -> None:
    store = _store(a="b", b="a")
    store[("ml", "b")]["status"] = {"phase": "Succeeded"}  # b was made before this a existed
    assert from_job_cycle(("ml", "a"), store) is None
    store[("ml", "b")]["status"] = {"phase": "Failed"}  # b noticed the loop first
    assert from_job_cycle(("ml", "a"), store) == ["a", "b", "a"]
