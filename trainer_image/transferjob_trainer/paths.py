"""Where a run reads and writes: the spec's locations after the CLI's overrides.

No TensorFlow: a missing flag is a permanent error that must fail in a second, before anything heavy is
imported. Both `run` (which checks the paths before training) and `training` (which writes under them)
import this module; neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transferjob.models import Location, Mode, TransferJobSpec
from transferjob_trainer import fs
from transferjob_trainer.errors import InvalidSpecError


@dataclass(frozen=True)
class RunPaths:
    """Where this run reads and writes, after the CLI's overrides."""

    data_root: str
    output: str
    init_model: str | None = None


def location_path(location: Location, field: str, flag: str) -> str:
    """The path or URI a location names; PVCs exist only inside the pod the operator builds."""
    if location.pvc is not None:
        raise InvalidSpecError(f"{field} is a pvc: pvc locations are mounted by the operator; pass {flag}")
    return fs.normalize(location.host_path or location.uri or "")


def resolve_paths(
    spec: TransferJobSpec, data_dir: str | None, output_dir: str | None, init_model: str | None
) -> RunPaths:
    """Apply the CLI overrides; say what is missing for fine-tuning from another job."""
    data_root = (
        fs.normalize(data_dir) if data_dir else location_path(spec.data.source, "data.source", "--data-dir")
    )
    output = (
        fs.normalize(output_dir)
        if output_dir
        else location_path(spec.output.location, "output.location", "--output-dir")
    )
    model = init_model or spec.model.from_model
    if spec.mode is Mode.FINE_TUNING and spec.model.from_job and not init_model:
        raise InvalidSpecError(
            f"model.fromJob {spec.model.from_job!r} needs --init-model: the operator resolves the job's "
            "exported model and passes its path"
        )
    if spec.mode is not Mode.FINE_TUNING and init_model:
        raise InvalidSpecError("--init-model is only used with mode FineTuning")
    return RunPaths(data_root=data_root, output=output.rstrip("/") or "/", init_model=model)
