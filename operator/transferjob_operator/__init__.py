"""The TransferJob operator: turns each TransferJob into one batch/v1 Job and keeps `.status` truthful.

Layers, each importing only the ones above it:

- `jobs`: TransferJob -> Job manifest, the spec in its pod template (pure).
- `tracking`: the trainer's progress events, shared between the log threads and the reconcile loop
  (the fold itself, `Progress`, and events -> `.status` are the SDK's `transferjob.status`).
- `status`: Job and pod facts -> the verdict `transferjob.status.job_status` words; Events (pure).
- `upstream`: whether a `fromJob` may start, and from which model (pure).
- `kube`: the API calls, and the log follower.
- `metrics`: the Prometheus metrics and their `/metrics` server.
- `handlers`: the kopf glue; `__main__`: the `tj-operator` command.
"""

from __future__ import annotations

from transferjob.status import Progress
from transferjob_operator.jobs import UpstreamModel, build_job
from transferjob_operator.status import status_from_job_and_pods, transitions

__all__ = [
    "Progress",
    "UpstreamModel",
    "build_job",
    "status_from_job_and_pods",
    "transitions",
]
