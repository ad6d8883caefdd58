"""Early stopping as a pure state machine, so its state can be checkpointed and survive a resume.

Keras' `EarlyStopping` callback keeps `best` and `wait` in memory and resets them in `on_train_begin`;
a trainer killed and restarted would forget them and train `patience` epochs too many. The rules here
are Keras' (improvement means beating the best by more than `min_delta`; stop once `wait` reaches
`patience`), with the state a plain dataclass that goes into the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from transferjob.models import EarlyStoppingSpec


@dataclass(frozen=True)
class StopState:
    """Best monitored value so far, its epoch (from 1), epochs without improvement, and the verdict."""

    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopState:
        return cls(**{k: data[k] for k in ("best", "best_epoch", "wait", "stopped") if k in data})


def higher_is_better(monitor: str) -> bool:
    return "acc" in monitor


def is_improvement(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None:
        return not math.isnan(value)
    if higher_is_better(monitor):
        return value - min_delta > best
    return value + min_delta < best


def step(
    state: StopState, epoch: int, value: float | None, spec: EarlyStoppingSpec
) -> tuple[StopState, bool]:
    """The state after `epoch` (from 1) ended with `value` of the monitored metric, and whether it improved.

    A missing or NaN value counts as no improvement. With early stopping disabled the best epoch is
    still tracked (for reporting) but the run never stops.
    """
    if value is None or math.isnan(value):
        improved = False
    else:
        improved = is_improvement(value, state.best, spec.monitor, spec.min_delta)
    if improved:
        new = replace(state, best=value, best_epoch=epoch, wait=0)
    else:
        new = replace(state, wait=state.wait + 1)
    if spec.enabled and not improved and new.wait >= spec.patience:
        new = replace(new, stopped=True)
    return new, improved


def kept_epoch(state: StopState, last_epoch: int, spec: EarlyStoppingSpec) -> int:
    """The epoch whose weights the exported model has: the best one when they are restored."""
    if spec.enabled and spec.restore_best_weights and state.best_epoch is not None:
        return state.best_epoch
    return last_epoch
