"""Per-epoch checkpoints: what lets a killed trainer continue where it stopped.

Layout under `<output>/checkpoints/`:

- `state.json`: the commit point, written last and atomically: the run's fingerprint, epochs finished,
  the full history, the early-stopping state and which weight files belong to it.
- `epoch-NNNN.weights.h5`: the trained model's weights and optimizer state after epoch NNNN (Keras'
  weights file carries the optimizer variables, so Adam's moments survive too).
- `best.weights.h5`: the weights of the best epoch so far (restored before test and export).
- `features/`: feature extraction's cached features, in shards (`features.FeatureCache`), so a resumed
  run reuses the very same views and computes only the shards a killed pass had not finished.

A run resumes only when the fingerprint matches (same mode, model, data files, training settings);
otherwise it starts over and the stale files are removed. The epoch's progress line is printed after
`state.json` is written, so every reported epoch is durable and a resumed run never reports it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from transferjob_trainer import fs
from transferjob_trainer.stopping import StopState

STATE_FILE = "state.json"
BEST_WEIGHTS = "best.weights.h5"


@dataclass
class RunState:
    """What a resumed run needs to continue as if it had never stopped."""

    fingerprint: str
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: StopState = field(default_factory=StopState)
    weights: str | None = None
    best_weights: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epochsDone": self.epochs_done,
            "history": self.history,
            "stop": self.stop.to_dict(),
            "weights": self.weights,
            "bestWeights": self.best_weights,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        return cls(
            fingerprint=data["fingerprint"],
            epochs_done=int(data["epochsDone"]),
            history=list(data.get("history", [])),
            stop=StopState.from_dict(data.get("stop", {})),
            weights=data.get("weights"),
            best_weights=data.get("bestWeights"),
        )


class CheckpointStore:
    """Reads and writes one run's checkpoints in a folder (local or a gfile URI)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def path(self, name: str) -> str:
        return fs.join(self.folder, name)

    def load(self, fingerprint: str) -> RunState | None:
        """The saved state of this same run, or None (a different run's files are cleared)."""
        state_path = self.path(STATE_FILE)
        if not fs.exists(state_path):
            return None
        try:
            state = RunState.from_dict(json.loads(fs.read_text(state_path)))
        except (ValueError, KeyError, TypeError):
            state = None
        if state is None or state.fingerprint != fingerprint:
            self.clear()
            return None
        return state

    def clear(self) -> None:
        fs.remove(self.folder)

    def save_weights(self, model: keras.Model, name: str, *copies: str) -> None:
        """Save under `name`, and the same bytes under each of `copies` (serialized once)."""
        with fs.local_file_for_write(self.path(name), ".weights.h5") as tmp:
            model.save_weights(tmp)
            data = Path(tmp).read_bytes() if copies else b""
        for copy in copies:
            fs.write_bytes(self.path(copy), data)

    def load_weights(self, model: keras.Model, name: str) -> None:
        """Load weights (and, for a compiled model, optimizer state) saved by `save_weights`."""
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        with fs.local_copy_for_read(self.path(name)) as path:
            model.load_weights(path)

    def commit(self, state: RunState, model: keras.Model, improved: bool) -> RunState:
        """Save the epoch's weights (and the best ones when it improved), then the state, then tidy up."""
        previous = state.weights
        name = f"epoch-{state.epochs_done:04d}.weights.h5"
        self.save_weights(model, name, *([BEST_WEIGHTS] if improved else []))
        state.weights = name
        if improved:
            state.best_weights = BEST_WEIGHTS
        fs.write_text(self.path(STATE_FILE), json.dumps(state.to_dict(), indent=1))
        if previous and previous != name:
            fs.remove(self.path(previous))
        return state
