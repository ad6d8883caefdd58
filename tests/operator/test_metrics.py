"""The operator's Prometheus endpoint and its Events, scraped and listed during a real training run (the
trainer in our image on the real node)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.operator import ops
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.harness import (
    OperatorProcess,
    digits_spec,
    install,
    pod_output,
    service_account_kubeconfig,
    transferjob,
)

pytestmark = [pytest.mark.node, pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture()
def namespace_with_operator(
    real_cluster: RealCluster, tmp_path: Path
) -> Iterator[tuple[ops.Namespace, OperatorProcess, ops.Scraper]]:
    api = real_cluster.api
    install(api)
    port = ops.free_port()
    with ops.own_namespace(api, "tj-metrics") as ns:
        sa = service_account_kubeconfig(api, real_cluster.kubeconfig, tmp_path / "kubeconfig")
        metrics = ("--metrics-port", str(port))
        process = ops.operator(sa, tmp_path / "operator.log", ns, *metrics, image=real_cluster.trainer_image)
        process.start()
        try:
            yield ops.Namespace(api, ns), process, ops.Scraper(port)
        finally:
            process.stop()


def test_metrics_move_during_a_run_and_event_reasons_are_documented(
    namespace_with_operator: tuple[ops.Namespace, OperatorProcess, ops.Scraper],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    cluster, _operator, scraper = namespace_with_operator
    data, source = ops.shared_digits(tmp_path_factory.getbasetemp())
    before = scraper.samples()
    assert before[f'{ops.PREFIX}transferjobs{{phase="Running"}}'] == 0
    assert before[f"{ops.PREFIX}jobs_created_total"] == 0
    assert before[f"{ops.PREFIX}status_patch_errors_total"] == 0
    assert f"{ops.PREFIX}log_stream_reconnects_total" in before

    out = pod_output(tmp_path)
    spec = digits_spec({"hostPath": str(data)}, {"hostPath": str(out)}, source, epochs=2)
    cluster.create(transferjob("scraped", spec))
    running = wait_for(
        lambda: scraper.when(f'{ops.PREFIX}transferjobs{{phase="Running"}}', 1),
        timeout=180,
        interval=0.3,
        what="the Running gauge at 1",
    )
    assert running[f"{ops.PREFIX}jobs_created_total"] == 1
    cluster.wait_phase("scraped", "Succeeded", timeout=180)
    after = wait_for(
        lambda: scraper.when(f'{ops.PREFIX}transferjobs{{phase="Succeeded"}}', 1),
        timeout=30,
        what="the Succeeded gauge at 1",
    )
    assert after[f'{ops.PREFIX}transferjobs{{phase="Running"}}'] == 0
    assert after[f"{ops.PREFIX}jobs_created_total"] == 1
    # Pending, Running, every epoch, Succeeded: several patches, none failed.
    assert after[f"{ops.PREFIX}status_patches_total"] >= 3
    assert after[f"{ops.PREFIX}status_patch_errors_total"] == 0
    steps = after[f"{ops.PREFIX}reconcile_duration_seconds_count"]
    assert steps > running[f"{ops.PREFIX}reconcile_duration_seconds_count"] > 0
    assert 0 < after[f"{ops.PREFIX}reconcile_duration_seconds_sum"] / steps < 1.0

    # Events can be filtered by reason, and every reason the run produced is in docs/operator.md.
    core: Any = cluster.core
    selector = "involvedObject.kind=TransferJob,involvedObject.name=scraped"

    def reasons_so_far() -> set[str]:
        return {e.reason for e in core.list_namespaced_event(cluster.ns, field_selector=selector).items}

    # kopf posts events from a queue: the last ones may land a moment after the status.
    wait_for(lambda: {"JobCreated", "Running", "Succeeded"} <= reasons_so_far(), timeout=30, what="events")
    reasons = reasons_so_far()
    succeeded = core.list_namespaced_event(cluster.ns, field_selector=f"{selector},reason=Succeeded").items
    assert [e.reason for e in succeeded] == ["Succeeded"]
    assert "test accuracy" in succeeded[0].message
    documented = ops.documented_event_reasons()
    assert reasons <= documented, reasons - documented


def test_refused_status_patches_are_counted_and_retried_until_accepted(
    namespace_with_operator: tuple[ops.Namespace, OperatorProcess, ops.Scraper],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """A ValidatingAdmissionPolicy refuses one TransferJob's status writes: the operator counts each
    refusal in `status_patch_errors`, retries at a bounded pace, and writes the status once allowed."""
    cluster, _process, scraper = namespace_with_operator
    errors = f"{ops.PREFIX}status_patch_errors_total"
    admission: Any = client.AdmissionregistrationV1Api(cluster.api)
    name = f"refuse-status-{cluster.ns}"
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["transferjob.io"],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE"],
                            "resources": ["transferjobs/status"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"object.metadata.namespace != '{cluster.ns}'",
                        "message": "status writes refused by the test",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {"metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}}
    )
    try:
        time.sleep(2.0)  # the API server loads new policies asynchronously
        data, source = ops.shared_digits(tmp_path_factory.getbasetemp())
        spec = digits_spec({"hostPath": str(data)}, {"hostPath": str(tmp_path / "out")}, source)
        spec["runPolicy"] = {"suspend": True}
        cluster.create(transferjob("refused", spec))
        wait_for(lambda: scraper.samples()[errors] >= 3, timeout=60, interval=0.5, what="3 refused patches")
        assert not cluster.status("refused").get("phase"), "no status got through"
        # Retried at a bounded pace (one try per ~2 s), not in a hot loop.
        before = scraper.samples()[errors]
        time.sleep(4.0)
        assert scraper.samples()[errors] - before <= 4
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)
    cluster.wait_phase("refused", "Suspended", timeout=60)
    settled = scraper.samples()[errors]
    time.sleep(3.0)
    assert scraper.samples()[errors] == settled, "no more errors once the status is accepted"
