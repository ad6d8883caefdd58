"""Pods that never start, on the real node: every way says why on the TransferJob, and ends.

The scheduler, the Job controller, the ResourceQuota admission, a mutating webhook and the kubelet are
the real ones (tests/conftest.py's ``real_cluster``): the kubelet reports a missing `hostPath` with
FailedMount Warning events (repeated while it retries) and the pod in ContainerCreating, and a missing
Secret as CreateContainerConfigError. No trainer runs in these tests: none of their pods gets that far.

One operator of the module's own serves the `tj-ps-*` namespaces, with a short `--from-job-timeout`
(so that a cycle is seen to fail *before* it would matter), a short interval and our trainer image.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.operator import ops
from transferjob_testing.cluster.kube import wait_for
from transferjob_testing.cluster.pki import Pki
from transferjob_testing.cluster.real import RealCluster
from transferjob_testing.harness import (
    OperatorProcess,
    digits_spec,
    serving_operator,
    transferjob,
)

pytestmark = [pytest.mark.node, pytest.mark.e2e, pytest.mark.timeout(180)]

FROM_JOB_TIMEOUT = 20


@pytest.fixture(scope="module")
def ps_operator(
    real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    root = tmp_path_factory.mktemp("podstart-operator")
    args = ("--interval", "0.5", "--from-job-timeout", str(FROM_JOB_TIMEOUT))
    args += ("--trainer-image", real_cluster.trainer_image)
    with serving_operator(
        real_cluster.api, real_cluster.kubeconfig, root, args, namespaces=("tj-ps-*",)
    ) as process:
        yield process


@pytest.fixture()
def ps(real_cluster: RealCluster, ps_operator: OperatorProcess) -> Iterator[ops.Namespace]:
    with ops.own_namespace(real_cluster.api, "tj-ps") as ns:
        yield ops.Namespace(real_cluster.api, ns, ps_operator)


def _spec(data: Path, out: Path, **extra: Any) -> dict[str, Any]:
    """A spec whose pod would train, if it ever started (it does not get that far here)."""
    return digits_spec(
        {"hostPath": str(data)},
        {"hostPath": str(out / "run")},
        "MobileNetV2",
        model={"imageSize": 96},
        **extra,
    )


def _conditions(ns: ops.Namespace, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ns.status(name).get("conditions") or []}


def _true(ns: ops.Namespace, name: str, ctype: str) -> dict[str, Any] | None:
    cond = _conditions(ns, name).get(ctype)
    return cond if cond is not None and cond["status"] == "True" else None


def _failed(ns: ops.Namespace, name: str, timeout: float) -> dict[str, Any]:
    ns.wait_phase(name, "Failed", timeout=timeout)
    failed = _true(ns, name, "Failed")
    assert failed is not None
    return failed


def _assert_no_contradiction(conditions: dict[str, dict[str, Any]]) -> None:
    """Only the final condition is True, and every closed one says that the failure closed it."""
    failed = conditions["Failed"]
    assert failed["status"] == "True"
    for ctype, cond in conditions.items():
        if ctype != "Failed":
            assert cond["status"] == "False", (ctype, cond)
            assert cond["reason"] == failed["reason"], (ctype, cond)
            assert "failed" in cond["message"], (ctype, cond)


# ------------------------------------------------------------------------------------- the pod


def test_missing_host_path_says_failed_mount_and_what_to_do(ps: ops.Namespace, tmp_path: Path) -> None:
    missing = tmp_path / "dgits"  # a typo: the folder does not exist
    ps.create(transferjob("typo", _spec(missing, tmp_path)))
    mount = ps.wait_condition("typo", "VolumeMountFailed", timeout=90)
    assert mount["reason"] == "FailedMount"
    assert f"hostPath type check failed: {missing} is not a directory" in mount["message"]
    assert "create the folder or PersistentVolumeClaim" in mount["message"]  # what to do
    assert ps.status("typo")["phase"] == "Pending"  # no timeout asked for: the kubelet keeps retrying
    assert not missing.exists()  # nothing created on the node


def test_pending_timeout_stops_a_job_whose_host_path_does_not_exist(
    ps: ops.Namespace, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder"
    spec = _spec(missing, tmp_path, runPolicy={"pendingTimeoutSeconds": 8})
    ps.create(transferjob("bounded", spec))
    failed = _failed(ps, "bounded", timeout=60)
    assert failed["reason"] == "PendingTimeout"
    assert "pendingTimeoutSeconds (8s)" in failed["message"]
    assert f"{missing} is not a directory" in failed["message"]  # the last problem seen
    conditions = _conditions(ps, "bounded")
    _assert_no_contradiction(conditions)
    # Seen, then closed by the timeout: recorded even when no status write fell between the kubelet's
    # first FailedMount and the deadline (a parallel fresh-clone run once had none there).
    assert conditions["VolumeMountFailed"]["status"] == "False", conditions
    assert conditions["VolumeMountFailed"]["reason"] == "PendingTimeout", conditions
    wait_for(lambda: not ps.pods("bounded"), timeout=60, what="the Job's pods deleted")

    def job_failed() -> list[dict[str, Any]]:
        (job,) = ps.jobs("bounded")
        return [c for c in job["status"].get("conditions") or [] if c["type"] == "Failed"]

    # Stopped for good: the Job itself failed, so no new pod is made (no retry loop).
    wait_for(job_failed, timeout=30, what="the Job failed")
    (job,) = ps.jobs("bounded")
    assert not job["status"].get("active")
    # Every Event the operator posted on the way is documented (docs/operator.md, "Events").
    selector = "involvedObject.kind=TransferJob,involvedObject.name=bounded"
    reasons = {e.reason for e in ps.core.list_namespaced_event(ps.ns, field_selector=selector).items}
    assert {"JobCreated", "FailedMount", "JobStopped", "PendingTimeout"} <= reasons
    documented = ops.documented_event_reasons()
    assert reasons <= documented, reasons - documented


def test_pending_timeout_closes_unschedulable_with_what_happened(ps: ops.Namespace, tmp_path: Path) -> None:
    spec = _spec(tmp_path, tmp_path, runPolicy={"pendingTimeoutSeconds": 5})
    spec["resources"]["gpus"] = 8  # the node has 4
    ps.create(transferjob("greedy", spec))
    unschedulable = ps.wait_condition("greedy", "Unschedulable", timeout=30)
    assert "nvidia.com/gpu" in unschedulable["message"]
    failed = _failed(ps, "greedy", timeout=60)
    assert failed["reason"] == "PendingTimeout" and "Insufficient nvidia.com/gpu" in failed["message"]
    conditions = _conditions(ps, "greedy")
    _assert_no_contradiction(conditions)
    assert conditions["Unschedulable"]["reason"] != "Scheduled"
    wait_for(lambda: not ps.pods("greedy"), timeout=60, what="the unschedulable pod deleted")


def test_quota_refusal_says_so(ps: ops.Namespace, tmp_path: Path) -> None:
    ps.core.create_namespaced_resource_quota(
        ps.ns, {"metadata": {"name": "no-gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}}
    )
    # Admission enforces a quota only once the quota controller has computed its status.
    wait_for(
        lambda: ps.core.read_namespaced_resource_quota("no-gpus", ps.ns).status.hard or {},
        timeout=30,
        what="the quota's status",
    )
    ps.create(transferjob("overquota", _spec(tmp_path, tmp_path)))
    refused = ps.wait_condition("overquota", "PodCreateFailed", timeout=45)
    assert refused["reason"] == "QuotaExceeded"
    assert "exceeded quota: no-gpus" in refused["message"]
    assert "kubectl describe resourcequota" in refused["message"]  # what to do
    assert ps.status("overquota")["phase"] == "Pending"
    assert ps.pods("overquota") == []


class _InjectsMissingSecret(BaseHTTPRequestHandler):
    """A mutating admission webhook, as a cluster admin might run one: it adds an env variable from a
    Secret (a proxy setting) to training pods; the Secret does not exist in the test's namespace."""

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        env = {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "proxy", "key": "url"}}}
        patch = [{"op": "add", "path": "/spec/containers/0/env/-", "value": env}]
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def missing_secret_webhook(ps: ops.Namespace, tmp_path: Path) -> Iterator[None]:
    pki = Pki(tmp_path / "webhook-pki")
    cert = pki.issue("webhook", "webhook", ips=("127.0.0.1",), server=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _InjectsMissingSecret)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    admission: Any = client.AdmissionregistrationV1Api(ps.api)
    name = f"inject-proxy-{ps.ns}"
    admission.create_mutating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "inject-proxy.transferjob.test",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{server.server_address[1]}/mutate",
                        "caBundle": base64.b64encode(pki.ca.cert.read_bytes()).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ps.ns}},
                    "objectSelector": {
                        "matchExpressions": [{"key": "transferjob.io/job-name", "operator": "Exists"}]
                    },
                    "failurePolicy": "Ignore",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
    )

    def mutates() -> bool:
        probe = {
            "metadata": {"name": "probe", "labels": {"transferjob.io/job-name": "probe"}},
            "spec": {"containers": [{"name": "c", "image": "x", "env": [{"name": "A", "value": "1"}]}]},
        }
        created = ps.core.create_namespaced_pod(ps.ns, probe, dry_run="All")
        return any(e.name == "HTTPS_PROXY" for e in created.spec.containers[0].env or [])

    try:
        wait_for(mutates, timeout=30, what="the webhook to be called")
        yield
    finally:
        admission.delete_mutating_webhook_configuration(name)
        server.shutdown()


def test_create_container_config_error_says_so(
    ps: ops.Namespace, missing_secret_webhook: None, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ps.create(transferjob("configless", _spec(data, tmp_path)))
    config = ps.wait_condition("configless", "ContainerStartFailed", timeout=45)
    assert config["reason"] == "CreateContainerConfigError"
    assert 'secret "proxy" not found' in config["message"]
    assert "create the Secret or ConfigMap the message names" in config["message"]
    assert ps.status("configless")["phase"] == "Pending"


# ------------------------------------------------------------------------------------- fromJob


def _fine_tuning(tmp_path: Path, name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    spec = _spec(tmp_path, tmp_path / name, mode="FineTuning", **extra)
    spec["model"] = {**spec["model"], "fromJob": upstream, "fineTuneAt": 100}
    return transferjob(name, spec)


def test_from_job_cycles_fail_every_member_at_once(ps: ops.Namespace, tmp_path: Path) -> None:
    loops = {"self": ["self"], "pair-a": ["pair-b"], "pair-b": ["pair-a"]}
    loops.update({"tri-a": ["tri-b"], "tri-b": ["tri-c"], "tri-c": ["tri-a"]})
    for name, (upstream,) in loops.items():
        ps.create(_fine_tuning(tmp_path, name, upstream))
    expected = {
        "self": "self -> self",
        "pair-a": "pair-a -> pair-b -> pair-a",
        "pair-b": "pair-b -> pair-a -> pair-b",
        "tri-a": "tri-a -> tri-b -> tri-c -> tri-a",
        "tri-b": "tri-b -> tri-c -> tri-a -> tri-b",
        "tri-c": "tri-c -> tri-a -> tri-b -> tri-c",
    }
    # Well before --from-job-timeout: the cycle is seen, not waited out.
    for name, loop in expected.items():
        failed = _failed(ps, name, timeout=FROM_JOB_TIMEOUT / 2)
        assert failed["reason"] == "FromJobCycle", (name, failed)
        assert f"model.fromJob forms a cycle: {loop}" in failed["message"]
        assert ps.jobs(name) == []


def test_failed_or_missing_upstream_leaves_no_contradicting_condition(
    ps: ops.Namespace, tmp_path: Path
) -> None:
    ps.create(_fine_tuning(tmp_path, "after-broken", "broken"))
    ps.create(_fine_tuning(tmp_path, "after-nothing", "nothing"))
    for name in ("after-broken", "after-nothing"):
        ps.wait_condition(name, "WaitingForJob", timeout=30)
    # The upstream fails without a trainer: its data folder does not exist, and it may not wait.
    broken = _spec(tmp_path / "missing", tmp_path / "broken", runPolicy={"pendingTimeoutSeconds": 3})
    ps.create(transferjob("broken", broken))
    assert _failed(ps, "broken", timeout=60)["reason"] == "PendingTimeout"

    failed = _failed(ps, "after-broken", timeout=30)
    assert failed["reason"] == "UpstreamFailed" and "PendingTimeout" in failed["message"]
    conditions = _conditions(ps, "after-broken")
    _assert_no_contradiction(conditions)
    assert conditions["WaitingForJob"]["reason"] == "UpstreamFailed"

    missing = _failed(ps, "after-nothing", timeout=FROM_JOB_TIMEOUT + 30)
    assert missing["reason"] == "UpstreamNotFound"
    conditions = _conditions(ps, "after-nothing")
    _assert_no_contradiction(conditions)
    assert conditions["WaitingForJob"]["reason"] == "UpstreamNotFound"
