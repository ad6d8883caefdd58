"""Learning curves of a TransferJob: loss and accuracy, training vs validation, best epoch marked; and
a TransferSweep's trials: the objective of each, and the learning curves of the best few.

The reference workflow judges a run by these two plots (is validation loss still falling? did
fine-tuning overfit?). `curves` extracts the numbers from a status (pure, testable), `plot_curves`
draws them with matplotlib's Agg backend, so it works on servers without a display, and returns the
figure, whose line data is exactly what was plotted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transferjob.models import TransferJob
from transferjob.sweeps import Goal, TransferSweep, TrialPhase

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Curves:
    """Per-epoch series; None where the trainer reported no value for that epoch."""

    epochs: list[int]
    loss: list[float | None]
    val_loss: list[float | None]
    accuracy: list[float | None]
    val_accuracy: list[float | None]
    best_epoch: int | None
    test_accuracy: float | None


def curves(job: TransferJob) -> Curves:
    """The series to plot, from `.status.history` (the newest epochs the status keeps)."""
    status = job.status
    history = sorted(status.history, key=lambda m: m.epoch) if status else []
    return Curves(
        epochs=[m.epoch for m in history],
        loss=[m.loss for m in history],
        val_loss=[m.val_loss for m in history],
        accuracy=[m.accuracy for m in history],
        val_accuracy=[m.val_accuracy for m in history],
        best_epoch=status.best_epoch if status else None,
        test_accuracy=status.test.accuracy if status and status.test else None,
    )


def plot_curves(job: TransferJob, path: str | Path | None = None) -> Figure:
    """Draw the curves (two panels: loss, accuracy) and save them to `path` when given.

    Raises ValueError for a job without any finished epoch: an empty plot would look like a bug.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    data = curves(job)
    if not data.epochs:
        raise ValueError(f"TransferJob {job.metadata.name!r} has no finished epoch to plot yet")
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = figure.subplots(1, 2)
    panels = (
        (loss_ax, "Loss", data.loss, data.val_loss),
        (acc_ax, "Accuracy", data.accuracy, data.val_accuracy),
    )
    for axes, title, train, val in panels:
        axes.plot(data.epochs, _nan(train), marker="o", label="training")
        axes.plot(data.epochs, _nan(val), marker="o", label="validation")
        if data.best_epoch is not None:
            axes.axvline(
                data.best_epoch, color="grey", linestyle="--", label=f"best epoch ({data.best_epoch})"
            )
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.legend()
        axes.grid(alpha=0.3)
    title = f"{job.metadata.name} ({job.spec.mode.value}, {job.spec.model.base})"
    if data.test_accuracy is not None:
        title += f" - test accuracy {data.test_accuracy:.4f}"
    figure.suptitle(title)
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure


def _nan(values: list[float | None]) -> list[float]:
    """Missing values as NaN: matplotlib leaves a gap instead of failing."""
    return [float("nan") if v is None else v for v in values]


#: How many of a sweep's best trials `plot_sweep` draws the learning curves of.
BEST_CURVES = 5
_PHASE_COLOURS = {
    TrialPhase.SUCCEEDED: "tab:green",
    TrialPhase.STOPPED: "tab:orange",
    TrialPhase.FAILED: "tab:red",
    TrialPhase.RUNNING: "tab:blue",
    TrialPhase.PENDING: "tab:grey",
}


def plot_sweep(sweep: TransferSweep, path: str | Path | None = None, best: int = BEST_CURVES) -> Figure:
    """Two panels: each trial's objective by trial index (coloured by phase, the best circled), and the
    per-epoch stopping metric of the `best` best trials (from the sweep's `.status`: no trial is read).

    Raises ValueError for a sweep none of whose trials has an objective or a finished epoch yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    trials = list(sweep.status.trials) if sweep.status else []
    objective = sweep.spec.objective
    if not any(t.objective is not None or any(v is not None for v in t.curve) for t in trials):
        raise ValueError(f"TransferSweep {sweep.metadata.name!r} has no trial with a result to plot yet")
    figure = Figure(figsize=(11, 4), layout="constrained")
    scores, learning = figure.subplots(1, 2)
    for phase, colour in _PHASE_COLOURS.items():
        points = [(t.index, t.objective) for t in trials if t.phase is phase and t.objective is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            scores.scatter(xs, ys, color=colour, label=phase.value)
    top = sweep.status.best_trial if sweep.status else None
    if top is not None:
        scores.scatter(
            [top.index], [top.objective], s=200, facecolors="none", edgecolors="black", label="best"
        )
    scores.set_title(f"{objective.metric} per trial ({objective.direction.value.lower()})")
    scores.set_xlabel("trial")
    scores.legend()
    scores.grid(alpha=0.3)
    sign = -1.0 if objective.direction is Goal.MAXIMIZE else 1.0
    ranked = sorted(
        (t for t in trials if t.objective is not None), key=lambda t: (sign * (t.objective or 0.0), t.index)
    )
    for trial in ranked[:best]:
        epochs = list(range(1, len(trial.curve) + 1))
        learning.plot(
            epochs, _nan(list(trial.curve)), marker="o", label=f"{trial.name} ({trial.objective:.4g})"
        )
    learning.set_title(f"{objective.stopping_metric} per epoch, best {min(best, len(ranked))} trials")
    learning.set_xlabel("epoch")
    if ranked:
        learning.legend()
    learning.grid(alpha=0.3)
    figure.suptitle(f"TransferSweep {sweep.metadata.name} ({sweep.spec.algorithm.name.value})")
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure
