"""Least privilege, checked against the real authorizer: the operator has what manifests/rbac/ grants
and nothing else, and a training pod has no API access at all.

The operator (the module operator of `test_faults`, on the real node) runs with a token of its own
ServiceAccount; `kubectl auth can-i` asks the API server's RBAC authorizer, so the matrix below is
what the cluster enforces, not what the YAML seems to say. Training pods run as their namespace's
`default` ServiceAccount without a token; even with one (minted here on purpose) they are refused.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.operator import test_faults as faults
from tests.operator.test_faults import Ops
from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.real import RealCluster, kubectl_binary
from transferjob_testing.harness import OPERATOR_NAMESPACE, RBAC, SERVICE_ACCOUNT, digits_spec, transferjob

# The digits, operator and namespace fixtures of the fault tests.
shared_digits = faults.shared_digits
fault_operator = faults.fault_operator
fault_namespace = faults.fault_namespace
out_root = faults.out_root
ops = faults.ops

pytestmark = [pytest.mark.node, pytest.mark.e2e, pytest.mark.timeout(300)]

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"

#: (verb, resource, allowed) for the operator, cluster-wide. "Allowed" rows are what it needs (see the
#: comments in manifests/rbac/cluster_role.yaml); the others are what a compromised operator could
#: otherwise abuse: run arbitrary pods, read Secrets, delete nodes or its own Jobs, escalate.
OPERATOR_MATRIX = [
    ("watch", "transferjobs.transferjob.io", True),
    ("patch", "transferjobs.transferjob.io", True),
    ("patch", "transferjobs.transferjob.io/status", True),
    ("watch", "transfersweeps.transferjob.io", True),
    ("patch", "transfersweeps.transferjob.io/status", True),
    ("update", "transfersweeps.transferjob.io/finalizers", True),
    ("create", "jobs.batch", True),
    ("patch", "jobs.batch", True),
    ("watch", "pods", True),
    ("get", "pods/log", True),
    ("create", "events", True),
    ("list", "events", True),
    ("delete", "events", False),
    ("create", "transferjobs.transferjob.io", True),
    ("delete", "transferjobs.transferjob.io", True),
    ("create", "transfersweeps.transferjob.io", False),
    ("delete", "transfersweeps.transferjob.io", False),
    ("create", "services", True),
    ("delete", "services", False),
    ("patch", "services", False),
    ("delete", "jobs.batch", False),
    ("create", "pods", False),
    ("delete", "pods", False),
    ("create", "pods/exec", False),
    ("get", "secrets", False),
    ("list", "secrets", False),
    ("create", "secrets", False),
    ("create", "configmaps", False),
    ("update", "configmaps", False),
    ("delete", "configmaps", False),
    ("delete", "nodes", False),
    ("create", "serviceaccounts/token", False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
    ("impersonate", "serviceaccounts", False),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", False),
]

#: What a training pod's identity may do with TransferJobs: nothing.
POD_DENIED = [
    ("get", "transferjobs.transferjob.io"),
    ("list", "transferjobs.transferjob.io"),
    ("watch", "transferjobs.transferjob.io"),
    ("create", "transferjobs.transferjob.io"),
    ("patch", "transferjobs.transferjob.io"),
    ("delete", "transferjobs.transferjob.io"),
    ("patch", "transferjobs.transferjob.io/status"),
    ("get", "secrets"),
    ("get", "pods"),
]


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl_binary(), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
    )


def can_i(kubeconfig: Path, verb: str, resource: str, *extra: str) -> bool:
    """`kubectl auth can-i` (exit 0 = yes, 1 = no; anything else is an error, not an answer)."""
    name, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, name, *extra]
    if sub:
        args.append(f"--subresource={sub}")
    proc = kubectl(kubeconfig, *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def test_operator_has_exactly_the_manifest_rbac(real_cluster: RealCluster, fault_operator: Any) -> None:
    kubeconfig = fault_operator.kubeconfig
    # The running process uses this kubeconfig, and the API server sees it as the ServiceAccount.
    assert fault_operator.proc is not None
    cmdline = Path(f"/proc/{fault_operator.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert str(kubeconfig).encode() in cmdline
    whoami = kubectl(kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == OPERATOR_USER, whoami.stderr

    # The role bound in the cluster is the manifest's, to that ServiceAccount only.
    rbac: Any = client.RbacAuthorizationV1Api(real_cluster.api)
    wanted = yaml.safe_load((RBAC / "cluster_role.yaml").read_text())
    role = real_cluster.api.sanitize_for_serialization(rbac.read_cluster_role("transferjob-operator"))
    assert role["rules"] == wanted["rules"]
    binding = rbac.read_cluster_role_binding("transferjob-operator")
    assert [(s.kind, s.namespace, s.name) for s in binding.subjects] == [
        ("ServiceAccount", OPERATOR_NAMESPACE, SERVICE_ACCOUNT)
    ]

    wrong = [
        (verb, res, f"expected {'yes' if allowed else 'no'}")
        for verb, res, allowed in OPERATOR_MATRIX
        if can_i(kubeconfig, verb, res, "--all-namespaces") != allowed
    ]
    assert not wrong, f"operator permissions differ from the manifest's intent: {wrong}"


def test_training_pod_identity_cannot_touch_transferjobs(
    ops: Ops, real_cluster: RealCluster, shared_digits: tuple[Path, str], out_root: Path
) -> None:
    """End to end: the operator (as its ServiceAccount) runs a job; its pod gets no token and no rights."""
    data, source = shared_digits
    spec = digits_spec({"hostPath": str(data)}, {"hostPath": str(out_root / "out")}, source, epochs=1)
    ops.create(transferjob("least", spec))
    status = ops.wait_phase("least", "Succeeded")
    assert status["model"]["uri"].endswith("model.keras")

    (pod,) = ops.pods("least")
    pod_spec = pod["spec"]
    account = pod_spec.get("serviceAccountName", "default")
    assert account == "default"
    assert pod_spec["automountServiceAccountToken"] is False
    volumes = pod_spec.get("volumes") or []
    assert not [v for v in volumes if "serviceAccountToken" in str(v.get("projected", ""))], volumes
    assert not [v for v in volumes if v["name"].startswith("kube-api-access")], volumes
    for container in pod_spec["containers"]:
        mounts = [m["mountPath"] for m in container.get("volumeMounts") or []]
        assert "/var/run/secrets/kubernetes.io/serviceaccount" not in mounts

    identity = f"system:serviceaccount:{ops.ns}:{account}"
    admin = real_cluster.kubeconfig
    allowed = [
        (verb, res) for verb, res in POD_DENIED if can_i(admin, verb, res, f"--as={identity}", "-n", ops.ns)
    ]
    assert not allowed, f"{identity} may {allowed}"

    # A real request with a real token of that ServiceAccount (what a pod would get if it mounted one).
    core: Any = client.CoreV1Api(real_cluster.api)
    token = core.create_namespaced_service_account_token(
        account, ops.ns, {"spec": {"expirationSeconds": 600}}
    ).status.token
    cfg = client.Configuration()
    cfg.host = real_cluster.api.configuration.host
    cfg.ssl_ca_cert = real_cluster.api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as as_pod:
        custom: Any = client.CustomObjectsApi(as_pod)
        calls = {
            "get": lambda: custom.get_namespaced_custom_object(GROUP, VERSION, ops.ns, PLURAL, "least"),
            "list": lambda: custom.list_namespaced_custom_object(GROUP, VERSION, ops.ns, PLURAL),
            "create": lambda: custom.create_namespaced_custom_object(
                GROUP, VERSION, ops.ns, PLURAL, transferjob("intruder", spec)
            ),
            "patch status": lambda: custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                ops.ns,
                PLURAL,
                "least",
                {"status": {"phase": "Failed"}},
                _content_type="application/merge-patch+json",
            ),
        }
        for what, call in calls.items():
            with pytest.raises(client.ApiException) as denied:
                call()
            assert denied.value.status == 403, (what, denied.value.status, denied.value.reason)
        assert identity in str(denied.value.body)
    assert ops.status("least")["phase"] == "Succeeded"
