"""transferjob: transfer learning on Kubernetes, from YAML or Python.

The public surface is re-exported here: the client and what `watch`/`events` yield, the spec and status
models of TransferJobs and TransferSweeps, the errors (all `TransferJobError`) and `SpecWarning`.
Everything else is internal.

Modules, in layers from the top down; a module imports only lower layers, so the pure bottom half
(the spec, the protocol, the status) is what the operator and the trainer build on. `make lint`
checks this order with import-linter (the contracts are in pyproject.toml).

- `cli`: the `tj` command.
- `report` (`tj report`: one HTML page on a finished job, beside the job it fine-tuned from).
- `client` (the facade over a backend), `plot`, `crd` (the CRD rendered from the models),
  `datasets` (the digits written as images), `predict` (`tj predict`: an exported model run here).
- `backends`: `kubernetes` (TransferJob objects in a cluster) and `local` (the trainer as a process;
  `localrunner` runs it, `localstatus` is its pure retry and exit-code logic), over `base`.
- `sweeping`: one step of a TransferSweep (`plan_sweep`), what the operator and a local sweep do (pure;
  imports `suggest`, so only the operator and `client.run_sweep_here` import it).
- `serving`: a finished job -> its KServe InferenceService (pure; `tj serve`).
- `status`: progress events -> `TransferJobStatus`, shared with the operator (pure).
- `suggest`: a sweep's next trial's parameters, Grid, Random or Optuna's TPE (pure; needs the
  `operator` extra, so this package does not import it; nor does `client`, but in a local sweep).
- `trials`: a sweep's trials named, built from the template, stopped early, ranked (pure).
- `progress`: the trainer's protocol (pure).
- `sweeps`: the TransferSweep spec and status, the source of its CRD schema (pure).
- `models`: the spec and status, the single source of the CRD schema (pure).
- `errors`: every error the SDK raises, all `TransferJobError`.
- `bases`, `constants`, `types`: facts and names everything agrees on.
"""

from transferjob.client import (
    EpochCompleted,
    JobEvent,
    PhaseChanged,
    StepAdvanced,
    TransferJobClient,
    WatchEvent,
)
from transferjob.errors import (
    BackendError,
    JobExistsError,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    JobTimeoutError,
    NamespaceNotFoundError,
    SpecError,
    SpecWarning,
    SweepExistsError,
    SweepFailedError,
    SweepNotFoundError,
    TransferJobError,
)
from transferjob.models import (
    AugmentationSpec,
    Condition,
    DataSpec,
    EarlyStoppingSpec,
    EpochMetrics,
    HeadSpec,
    Location,
    Mode,
    ModelSpec,
    OutputSpec,
    Phase,
    PVCSource,
    ResourcesSpec,
    RunPolicy,
    StorageSpec,
    TestMetrics,
    Toleration,
    TrainingSpec,
    TransferJob,
    TransferJobSpec,
    TransferJobStatus,
)
from transferjob.sweeps import TransferSweep, TransferSweepSpec, TransferSweepStatus, TrialStatus

__version__ = "0.1.0"

__all__ = [
    "AugmentationSpec",
    "BackendError",
    "Condition",
    "DataSpec",
    "EarlyStoppingSpec",
    "EpochCompleted",
    "EpochMetrics",
    "HeadSpec",
    "JobEvent",
    "JobExistsError",
    "JobFailedError",
    "JobNotFoundError",
    "JobNotReadyError",
    "JobTimeoutError",
    "Location",
    "Mode",
    "ModelSpec",
    "NamespaceNotFoundError",
    "OutputSpec",
    "PVCSource",
    "Phase",
    "PhaseChanged",
    "ResourcesSpec",
    "RunPolicy",
    "SpecError",
    "SpecWarning",
    "StepAdvanced",
    "StorageSpec",
    "SweepExistsError",
    "SweepFailedError",
    "SweepNotFoundError",
    "TestMetrics",
    "Toleration",
    "TrainingSpec",
    "TransferJob",
    "TransferJobClient",
    "TransferJobError",
    "TransferJobSpec",
    "TransferJobStatus",
    "TransferSweep",
    "TransferSweepSpec",
    "TransferSweepStatus",
    "TrialStatus",
    "WatchEvent",
    "__version__",
]
