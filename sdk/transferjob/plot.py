"""Learning curves of a TransferJob: loss and accuracy, training vs validation, best epoch marked.

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
