"""Two operator replicas with kopf peering on the real node: one acts, the other takes over.

The replicas are two `tj-operator` processes with `--peering`, each with the operator ServiceAccount's
RBAC; the older one has the higher priority and acts, the younger one stays paused. Killing the active
one with SIGKILL (no goodbye in the peering object) must hand the running job to the stand-by within
about `--peering-lifetime` seconds, and the job must end Succeeded with its full history. (The
in-cluster Deployment's takeover after its pod is deleted is in tests/node/test_operator.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.operator import ops
from transferjob_testing.cluster.kube import apply_yaml, wait_for
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.harness import (
    REPO_ROOT,
    install,
    paced_spec,
    pod_output,
    service_account_kubeconfig,
    transferjob,
)

pytestmark = [pytest.mark.node, pytest.mark.e2e, pytest.mark.timeout(600)]

PEERING = "transferjob-operator"
LIFETIME = 5  # seconds; the Deployment uses 15
EPOCHS = 15


@pytest.fixture()
def peered_namespace(real_cluster: RealCluster) -> Iterator[str]:
    """A namespace with a KopfPeering object (the replicas are namespace-scoped here)."""
    api_client = real_cluster.api
    install(api_client)
    apply_yaml(api_client, REPO_ROOT / "manifests" / "operator" / "peering.yaml")
    ext = client.ApiextensionsV1Api(api_client)

    def established() -> bool:
        crd = ext.read_custom_resource_definition("kopfpeerings.kopf.dev")
        conditions = crd.status.conditions if crd.status else None
        return any(c.type == "Established" and c.status == "True" for c in conditions or [])

    wait_for(established, timeout=30, what="the KopfPeering CRD")
    with ops.own_namespace(api_client, "tj-ha") as ns:
        body = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            "kopf.dev", "v1", ns, "kopfpeerings", body
        )
        yield ns


def test_standby_takes_over_a_running_job_after_sigkill(
    real_cluster: RealCluster,
    peered_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ns = peered_namespace
    root = tmp_path_factory.mktemp("ha")
    data, source = ops.shared_digits(tmp_path_factory.getbasetemp())
    api_client = real_cluster.api
    sa = service_account_kubeconfig(api_client, real_cluster.kubeconfig, root / "kubeconfig")
    peering = ("--peering", PEERING, "--peering-lifetime", str(LIFETIME))
    image = real_cluster.trainer_image
    first = ops.operator(sa, root / "first.log", ns, *peering, image=image)
    second = ops.operator(sa, root / "second.log", ns, *peering, image=image)
    try:
        first.start()
        ops.wait_log(first, "Resuming operations", timeout=30)  # alone: it un-pauses
        second.start()
        # Both announce themselves; the younger one starts paused and, seeing an older peer, stays so.
        custom: Any = client.CustomObjectsApi(api_client)
        wait_for(
            lambda: (
                len(
                    custom.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", PEERING).get(
                        "status"
                    )
                    or {}
                )
                == 2
            ),
            timeout=30,
            what="two replicas in the peering object",
        )

        cluster = ops.Namespace(api_client, ns)
        # Epochs of 1-2 s: the job is still training when the stand-by takes over.
        out = pod_output(root)
        spec = paced_spec({"hostPath": str(data)}, {"hostPath": str(out)}, source, EPOCHS)
        cluster.create(transferjob("ha", spec))
        wait_for(
            lambda: (cluster.status("ha").get("epoch") or 0) >= 1,
            timeout=180,
            interval=0.3,
            what="the first epoch in .status",
        )
        # Only the active replica acted: it created the Job and posted the events.
        assert "JobCreated" in ops.log_text(first)
        assert "JobCreated" not in ops.log_text(second)
        assert "Running: pod" not in ops.log_text(second)
        assert "Resuming operations" not in ops.log_text(second)
        assert "paused by peering" in ops.log_text(second)
        assert "acting: resuming the reconciler" not in ops.log_text(second)

        killed = ops.kill(first)
        ops.wait_log(second, "Resuming operations", timeout=LIFETIME + 20)
        took_over = time.monotonic() - killed
        print(f"stand-by resumed {took_over:.1f}s after the SIGKILL (peering lifetime {LIFETIME}s)")
        assert took_over <= LIFETIME + 15

        status = cluster.wait_phase("ha", "Succeeded", timeout=240)
        finished = time.monotonic() - killed
        print(f"Succeeded {finished:.1f}s after the SIGKILL")
        ops.assert_full_history(status, EPOCHS)
        assert len(cluster.jobs("ha")) == 1  # adopted, not created again
        assert "JobCreated" not in ops.log_text(second)
        assert "acting: resuming the reconciler" in ops.log_text(second)
        assert "Succeeded" in ops.log_text(second)
    finally:
        first.stop()
        second.stop()
        print(f"operator logs: {first.log_path} {second.log_path}")
