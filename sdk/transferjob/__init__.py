"""transferjob: transfer learning on Kubernetes, from YAML or Python.

The public surface is re-exported here; everything else is internal.
"""

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
    "Condition",
    "DataSpec",
    "EarlyStoppingSpec",
    "EpochMetrics",
    "HeadSpec",
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
    "TransferJobSpec",
    "TransferJobStatus",
    "__version__",
]
