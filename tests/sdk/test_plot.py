"""Learning curves: the plotted line data is the status history, the best epoch is marked."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from transferjob import EpochMetrics, Phase, TestMetrics, TransferJob, TransferJobStatus
from transferjob.plot import curves, plot_curves


def finished(make_job: Callable[..., TransferJob]) -> TransferJob:
    job = make_job(name="cats-dogs-features")
    job.status = TransferJobStatus(
        phase=Phase.SUCCEEDED,
        history=[
            EpochMetrics(epoch=2, loss=0.4, accuracy=0.8, val_loss=0.3, val_accuracy=0.9),
            EpochMetrics(epoch=1, loss=0.7, accuracy=0.6, val_loss=0.5, val_accuracy=None),
            EpochMetrics(epoch=3, loss=0.3, accuracy=0.85, val_loss=0.35, val_accuracy=0.88),
        ],
        best_epoch=2,
        test=TestMetrics(loss=0.3, accuracy=0.97),
    )
    return job


def test_curve_data_is_the_history_in_epoch_order(make_job: Callable[..., TransferJob]) -> None:
    data = curves(finished(make_job))
    assert data.epochs == [1, 2, 3]
    assert data.loss == [0.7, 0.4, 0.3] and data.val_loss == [0.5, 0.3, 0.35]
    assert data.accuracy == [0.6, 0.8, 0.85] and data.val_accuracy == [None, 0.9, 0.88]
    assert (data.best_epoch, data.test_accuracy) == (2, 0.97)


def test_figure_has_train_and_val_curves_and_best_epoch(
    make_job: Callable[..., TransferJob], tmp_path: Path
) -> None:
    from PIL import Image

    path = tmp_path / "curves.png"
    figure = plot_curves(finished(make_job), path)
    loss_ax, acc_ax = figure.axes
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("Loss", "Accuracy")
    train, val, best = loss_ax.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [0.7, 0.4, 0.3]
    assert list(val.get_ydata()) == [0.5, 0.3, 0.35]
    assert list(best.get_xdata()) == [2, 2]
    assert [text.get_text() for text in loss_ax.get_legend().get_texts()] == [
        "training",
        "validation",
        "best epoch (2)",
    ]
    acc_val = acc_ax.get_lines()[1].get_ydata()
    assert math.isnan(acc_val[0]) and list(acc_val[1:]) == [0.9, 0.88]  # missing value: a gap
    assert "test accuracy 0.9700" in figure.get_suptitle()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 400)


def test_nothing_to_plot_is_an_error(make_job: Callable[..., TransferJob]) -> None:
    with pytest.raises(ValueError, match="no finished epoch"):
        plot_curves(make_job(name="fresh"))
