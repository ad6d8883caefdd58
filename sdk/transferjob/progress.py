"""The progress protocol: how a trainer tells the world what it is doing, without knowing about Kubernetes.

The trainer prints one JSON object per stdout line for each event, and writes the final event (finished
or failed) to the container's termination-message file as well. The operator reads these lines from the
pod's log and the termination message from the pod status; the local backend reads the same lines from a
subprocess. Lines that are not protocol events (a user's print, a library's chatter) are ignored.

Events (`event` field):
- `started`: the run began (or resumed: `initialEpoch` > 0), with the planned `epochs` and data sizes.
- `phase`: a coarse step began: `loading`, `features`, `training`, `evaluating`, `exporting`.
- `progress`: how far a long step has got (images done of total, images/s, seconds left), at most
  every `TJ_PROGRESS_SECONDS` (10) seconds per step.
- `epoch`: one epoch finished, with all its metrics.
- `finished`: success: best epoch, test metrics, where the model went.
- `failed`: a reason (`InvalidSpec`, `InvalidData`, `TrainingError`, ...), a message, and whether a retry
  could help (`permanent`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from transferjob.constants import TERMINATION_MESSAGE_LIMIT
from transferjob.models import ApiModel, EpochMetrics, ModelArtifacts, TestMetrics


class Started(ApiModel):
    """The trainer has read its spec and data and is about to train."""

    event: Literal["started"] = "started"
    mode: str
    base: str
    epochs: int
    initial_epoch: int = 0
    classes: list[str] = Field(default_factory=list)
    train_images: int | None = None
    val_images: int | None = None
    test_images: int | None = None
    devices: list[str] = Field(default_factory=list)
    #: Image files left out as undecodable (`data.skipInvalidImages`), and the first of them ("path: why").
    skipped_images: int = 0
    skipped_files: list[str] = Field(default_factory=list)


#: The coarse steps of a run, in order.
StepName = Literal["loading", "features", "training", "evaluating", "exporting"]


class PhaseChanged(ApiModel):
    """A coarse step of the run began."""

    event: Literal["phase"] = "phase"
    phase: StepName
    message: str = ""


class StepProgress(ApiModel):
    """How far a long step has got (the image check, the feature pass, fine-tuning's epochs), sent at a
    bounded rate so that a long epoch does not look hung."""

    event: Literal["progress"] = "progress"
    step: StepName
    done: int = Field(description="Images through the step so far (in this epoch, when training).")
    total: int = Field(description="Images the step has (per epoch, when training).")
    epoch: int | None = Field(default=None, description="The epoch under way, from 1, when training.")
    images_per_second: float | None = None
    remaining_seconds: float | None = Field(
        default=None, description="Until the step ends at this rate (training: the last planned epoch)."
    )


class EpochEnded(ApiModel):
    """One epoch finished; `metrics.epoch` counts from 1."""

    event: Literal["epoch"] = "epoch"
    epochs: int
    metrics: EpochMetrics


class Finished(ApiModel):
    """Success: the best weights were tested and exported."""

    event: Literal["finished"] = "finished"
    epochs_run: int
    best_epoch: int | None = None
    test: TestMetrics
    model: ModelArtifacts
    history: list[EpochMetrics] = Field(default_factory=list)


class Failed(ApiModel):
    """Failure, with a reason a program can act on and a message a person can."""

    event: Literal["failed"] = "failed"
    reason: str
    message: str
    permanent: bool = False


AnyEvent = Started | PhaseChanged | StepProgress | EpochEnded | Finished | Failed
Event = Annotated[AnyEvent, Field(discriminator="event")]
_EVENT = TypeAdapter(Event)


def encode(event: AnyEvent) -> str:
    """One protocol line (without the newline)."""
    return json.dumps(event.to_dict(), separators=(",", ":"), allow_nan=False)


def decode(line: str | bytes) -> AnyEvent | None:
    """The event on a line, or None when the line is not a protocol event."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text.startswith("{") or '"event"' not in text:
        return None
    try:
        return _EVENT.validate_python(json.loads(text))
    except (ValueError, ValidationError):
        return None


def termination_message(event: Finished | Failed, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The final event, shrunk to fit Kubernetes' termination-message limit.

    What matters most survives: history goes first, then the confusion matrix and per-class metrics,
    and a failure message is cut last.
    """
    data: dict[str, Any] = event.to_dict()
    text = json.dumps(data, separators=(",", ":"))
    if isinstance(event, Finished):
        for drop in (("history",), ("test", "confusionMatrix"), ("test", "perClass")):
            if len(text.encode()) <= limit:
                break
            target = data
            for key in drop[:-1]:
                target = target.get(key, {})
            target.pop(drop[-1], None)
            text = json.dumps(data, separators=(",", ":"))
    while len(text.encode()) > limit and data.get("message"):
        data["message"] = data["message"][: max(0, len(data["message"]) - (len(text.encode()) - limit) - 16)]
        data["message"] += "..."
        text = json.dumps(data, separators=(",", ":"))
    return text
