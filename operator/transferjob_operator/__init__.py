"""The TransferJob operator: turns each TransferJob into one batch/v1 Job and keeps `.status` truthful,
and runs each TransferSweep's trials as TransferJobs.

Modules, in layers from the top down; a module imports only lower layers (never its own), checked
by `make lint` (import-linter, contracts in pyproject.toml). The bottom two layers are pure.

6. `__main__`: the `tj-operator` command.
5. `handlers`: the kopf glue (watches, indexes, peering, login).
4. `reconciler`: the TransferJob step (create the Job, follow the logs, write `.status`, post Events);
   `sweeper`: the TransferSweep step (the SDK's pure `transferjob.sweeping.plan_sweep`, then its writes).
3. `kube`: the API calls, and the log follower; `metrics`: the Prometheus metrics and `/metrics`;
   `upstream`: whether a `fromJob` may start, and from which model (pure).
2. `status`: Job and pod facts -> the verdict that `transferjob.status.job_status` words, and Events
   (pure); `tracking`: the trainer's progress, shared between the log threads and the reconcile loop
   (the fold itself, `Progress`, is the SDK's `transferjob.status`).
1. `jobs`: TransferJob -> Job manifest, the spec in its pod template; `slim`: the small copies of
   objects the operator keeps; `workqueue`: a generic work queue that knows nothing of TransferJobs.
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
