"""Prometheus metrics of the operator, served on `--metrics-address:--metrics-port` at `/metrics`.

What an on-call person asks first: how many jobs are in which phase, is the operator keeping up (the
reconcile latency), is it losing its log streams, and are its status writes failing. The counters are
per process: after a restart or a peering hand-over they start again from zero, as Prometheus expects.
Only the replica that acts (see `--peering`) moves them; a paused replica serves its last values.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from transferjob.models import Phase

PREFIX = "transferjob_operator"

RECONCILE_SECONDS = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Time one reconcile step of one TransferJob took (index look-ups, API calls, status patch).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LOG_STREAM_RECONNECTS = Counter(
    f"{PREFIX}_log_stream_reconnects",
    "Log streams of running training pods that ended early and were opened again.",
)
STATUS_PATCHES = Counter(f"{PREFIX}_status_patches", "Status patches written to TransferJobs.")
STATUS_PATCH_ERRORS = Counter(
    f"{PREFIX}_status_patch_errors",
    "Status patches the API server refused or that failed in transit (retried on the next step).",
)
JOBS_CREATED = Counter(f"{PREFIX}_jobs_created", "Training Jobs created (adopted existing ones not counted).")


class PhaseCounts(Collector):
    """`transferjob_operator_transferjobs{phase}`: TransferJobs the operator sees, by `.status.phase`.

    Kept from watch events rather than counted per scrape, so a scrape costs no API call. Every phase
    is always exported (zero included), so a dashboard's "Failed" line does not vanish at zero.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str | None, str], str] = {}

    def set(self, namespace: str | None, name: str, phase: str | None) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase or Phase.PENDING.value

    def forget(self, namespace: str | None, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            phases = list(self._phases.values())
        counts = {phase.value: 0 for phase in Phase}
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        help_text = "TransferJobs by phase, as this operator last saw them."
        family = GaugeMetricFamily(f"{PREFIX}_transferjobs", help_text, labels=["phase"])
        for phase, count in sorted(self.counts().items()):
            family.add_metric([phase], count)
        yield family


PHASES = PhaseCounts()
REGISTRY.register(PHASES)


def serve(address: str, port: int) -> None:
    """Serve `/metrics` (and the same on `/`) from a daemon thread; the operator's loop is not involved."""
    start_http_server(port, addr=address)
