"""transferjob: transfer learning on Kubernetes, from YAML or Python.

The public surface is re-exported here: the client and what `watch`/`events` yield, the spec and status
models, and the errors (all `TransferJobError`). Everything else is internal.
"""

from transferjob.client import EpochCompleted, JobEvent, PhaseChanged, TransferJobClient, WatchEvent
from transferjob.errors import (
    BackendError,
    JobExistsError,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    JobTimeoutError,
    SpecError,
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
    TestMetrics,
    Toleration,
    TrainingSpec,
    TransferJob,
    TransferJobSpec,
    TransferJobStatus,
)

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
    "OutputSpec",
    "PVCSource",
    "Phase",
    "PhaseChanged",
    "ResourcesSpec",
    "RunPolicy",
    "SpecError",
    "TestMetrics",
    "Toleration",
    "TrainingSpec",
    "TransferJob",
    "TransferJobClient",
    "TransferJobError",
    "TransferJobSpec",
    "TransferJobStatus",
    "WatchEvent",
    "__version__",
]
