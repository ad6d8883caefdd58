"""Operators of a test's own, in namespaces of its own: what the operator's real-node modules share.

These tests stop, kill and restart operators, or run two at once, so they cannot use the module
operator of test_e2e (which serves only the `tj-test-*` namespaces). Each starts operators scoped to
its own namespaces, authenticated as the operator's ServiceAccount like every e2e operator, with our
trainer image; the pods run on the real node of tests/conftest.py's ``real_cluster``, as UID 1000:
data folders are made readable (`shared_digits`), output folders handed to it (`harness.pod_output`).
"""

from __future__ import annotations

import contextlib
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from transferjob.constants import GROUP, PLURAL, VERSION
from transferjob_testing.cluster.controlplane import free_port as free_port  # for the metrics-port tests
from transferjob_testing.cluster.kube import temporary_namespace, wait_for
from transferjob_testing.harness import POD_BASE, REPO_ROOT, OperatorProcess, make_digits, pod_data


def shared_digits(base: Path) -> tuple[Path, str]:
    """The digits (a folder for a hostPath, readable by the trainer) and the pretrained source model as
    a training pod sees it (inside that folder); made once per test session for these modules."""
    root = base / "own-operator-digits"
    root.mkdir(exist_ok=True)
    data, source = make_digits(root)
    if not (data / "source.keras").is_file():
        pod_data(data, source)
    return data, POD_BASE


def own_namespace(api: client.ApiClient, prefix: str) -> contextlib.AbstractContextManager[str]:
    """A fresh namespace `<prefix>-<hex>` (its default ServiceAccount exists), deleted afterwards."""
    return temporary_namespace(api, prefix, {"transferjob.io/test": "true"})


def operator(
    kubeconfig: Path, log: Path, namespace: str, *extra: str, image: str, interval: float = 0.5
) -> OperatorProcess:
    """An operator process serving only `namespace` whose Jobs run `image` (not started)."""
    args = ("--interval", str(interval), "--trainer-image", image, *extra)
    return OperatorProcess(kubeconfig, log, args, namespaces=(namespace,))


def kill(process: OperatorProcess) -> float:
    """SIGKILL: no goodbye to the peers, no cleanup. Returns when it died (monotonic)."""
    assert process.proc is not None
    process.proc.kill()
    process.proc.wait()
    process.proc = None
    return time.monotonic()


def log_text(process: OperatorProcess) -> str:
    return process.log_path.read_text(errors="replace") if process.log_path.exists() else ""


def wait_log(process: OperatorProcess, needle: str, timeout: float) -> None:
    wait_for(
        lambda: needle in log_text(process), timeout=timeout, interval=0.2, what=f"{needle!r} in the log"
    )


class Namespace:
    """TransferJobs, Jobs and pods of one namespace, as an admin sees them."""

    def __init__(
        self, api: client.ApiClient, namespace: str, operator: OperatorProcess | None = None
    ) -> None:
        self.ns = namespace
        self.operator = operator  # whose log tail `describe` adds
        self.custom: Any = client.CustomObjectsApi(api)
        self.batch: Any = client.BatchV1Api(api)
        self.core: Any = client.CoreV1Api(api)
        self.api = api

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def status(self, name: str) -> dict[str, Any]:
        return dict((self.get(name) or {}).get("status") or {})

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            PLURAL,
            name,
            {"spec": spec},
            _content_type="application/merge-patch+json",
        )

    def wait_phase(self, name: str, phase: str, timeout: float, what: str = "") -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
                raise AssertionError(f"{name} ended {status['phase']}: {status.get('conditions')}")
            return status if status.get("phase") == phase else None

        with self.explained(name):
            return wait_for(reached, timeout=timeout, interval=0.3, what=what or f"{name} to be {phase}")

    def wait_condition(self, name: str, ctype: str, timeout: float) -> dict[str, Any]:
        """The TransferJob's condition `ctype` once it is True."""

        def true() -> dict[str, Any] | None:
            found = [c for c in self.status(name).get("conditions") or [] if c["type"] == ctype]
            return found[0] if found and found[0]["status"] == "True" else None

        with self.explained(name):
            return wait_for(true, timeout=timeout, what=f"{name}: {ctype}")

    @contextlib.contextmanager
    def explained(self, name: str) -> Iterator[None]:
        """A wait that times out says what the cluster looked like then: on a loaded CI machine that
        is the only evidence there will be."""
        try:
            yield
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.describe(name)}") from None

    def describe(self, name: str) -> str:
        """The TransferJob's conditions, its pods' states and the namespace's Events, as text."""
        lines = [f"TransferJob {self.ns}/{name}: phase {self.status(name).get('phase')}"]
        for cond in self.status(name).get("conditions") or []:
            lines.append(f"  {cond['type']}={cond['status']} {cond.get('reason')}: {cond.get('message')}")
        for pod in self.core.list_namespaced_pod(self.ns).items:
            waiting = [
                f"{c.name}: {c.state.waiting.reason}"
                for c in (pod.status.container_statuses or [])
                if c.state and c.state.waiting
            ]
            conditions = [
                f"{c.type}={c.status} {c.reason or ''} {c.message or ''}" for c in pod.status.conditions or []
            ]
            lines.append(
                f"pod {pod.metadata.name}: {pod.status.phase} on {pod.spec.node_name}: {waiting} {conditions}"
            )
        for event in self.core.list_namespaced_event(self.ns).items[-20:]:
            lines.append(
                f"event {event.involved_object.kind}/{event.involved_object.name}: {event.type} "
                f"{event.reason} x{event.count}: {event.message}"
            )
        if self.operator is not None:
            lines.append(f"the operator's log ends: {log_text(self.operator)[-3000:]}")
        return "\n".join(lines)

    def jobs(self, name: str) -> list[dict[str, Any]]:
        items = self.batch.list_namespaced_job(
            self.ns, label_selector=f"transferjob.io/job-name={name}"
        ).items
        return [self.api.sanitize_for_serialization(j) for j in items]

    def pods(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(self.ns, label_selector=f"transferjob.io/job-name={name}").items
        return [self.api.sanitize_for_serialization(p) for p in items]


def documented_event_reasons() -> set[str]:
    """Every Event reason named in the "Events" section of docs/operator.md."""
    text = (REPO_ROOT / "docs" / "operator.md").read_text()
    return set(re.findall(r"`(\w+)`", text.split("## Events", 1)[1].split("\n## ", 1)[0]))


def assert_full_history(status: dict[str, Any], epochs: int) -> None:
    """Every epoch exactly once, in order, with a test result and a model: nothing lost, nothing doubled."""
    history = [m["epoch"] for m in status["history"]]
    assert history == list(range(1, epochs + 1)), history
    assert status["epoch"] == epochs
    assert 0.0 <= status["test"]["accuracy"] <= 1.0
    assert status["model"]["uri"].endswith("model.keras")
    assert status["completionTime"]


PREFIX = "transferjob_operator_"


class Scraper:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def samples(self) -> dict[str, float]:
        """`name{label="value"}` -> value, for the operator's own metrics."""
        with urllib.request.urlopen(self.url, timeout=5) as response:
            text = response.read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # Histogram buckets (`le`) are left out; their _sum and _count stay.
                if sample.name.startswith(PREFIX) and "le" not in sample.labels:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                    key = f"{sample.name}{{{labels}}}" if labels else sample.name
                    found[key] = sample.value
        return found

    def when(self, key: str, value: float) -> dict[str, float] | None:
        """The samples, once `key` has `value` (for `wait_for`)."""
        samples = self.samples()
        return samples if samples[key] == value else None
