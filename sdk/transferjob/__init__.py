"""transferjob: transfer learning on Kubernetes, from YAML or Python.

The public surface is re-exported here; everything else is internal.
"""

from transferjob.client import TransferJobClient
from transferjob.errors import (
    BackendError,
    JobExistsError,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    JobTimeoutError,
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
    SpecError,
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
    "EpochMetrics",
    "HeadSpec",
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
    "__version__",
]
