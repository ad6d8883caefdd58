"""Test-set metrics from labels and predicted probabilities (pure NumPy, unit-tested)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transferjob.models import ClassMetrics, TestMetrics

#: A sigmoid output above this is the positive class. Strictly above, as Keras' `BinaryAccuracy` counts
#: during training and validation: the test evaluation must count the same way.
BINARY_THRESHOLD = 0.5


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class indices from a sigmoid column (binary) or a softmax row."""
    probs = np.asarray(probabilities)
    if probs.ndim == 1 or probs.shape[-1] == 1:
        return (probs.reshape(-1) > BINARY_THRESHOLD).astype(np.int64)
    return np.argmax(probs, axis=-1).astype(np.int64)


def predicted_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """The probability of the class each image is predicted as (a sigmoid's p, or 1 - p for class 0)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim == 1 or probs.shape[-1] == 1:
        p = probs.reshape(-1)
        return np.where(p > BINARY_THRESHOLD, p, 1.0 - p)
    return np.max(probs, axis=-1)


@dataclass(frozen=True)
class Mistake:
    """A test image predicted wrong: its index in the test split, both classes, and how sure the model was."""

    index: int
    true: int
    predicted: int
    probability: float


def misclassified(
    y_true: Sequence[int] | np.ndarray, probabilities: np.ndarray, limit: int
) -> tuple[list[Mistake], int]:
    """The first `limit` mistakes, most confident first (those say most about the data or the model),
    and how many mistakes there were in all. Ties keep the test split's order."""
    labels = np.asarray(y_true, dtype=np.int64)
    predicted = predicted_classes(probabilities)
    sure = predicted_probabilities(probabilities)
    wrong = np.flatnonzero(predicted != labels)
    ranked = wrong[np.argsort(-sure[wrong], kind="stable")][:limit]
    mistakes = [Mistake(int(i), int(labels[i]), int(predicted[i]), float(sure[i])) for i in ranked]
    return mistakes, len(wrong)


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n: int
) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def cross_entropy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean cross-entropy, clipped like Keras (epsilon 1e-7), for binary and multi-class outputs."""
    eps = 1e-7
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(y_true, dtype=np.int64)
    if probs.ndim == 1 or probs.shape[-1] == 1:
        p = np.clip(probs.reshape(-1), eps, 1 - eps)
        return float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))
    p = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)
    return float(np.mean(-np.log(p)))


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> TestMetrics:
    """Loss, accuracy, per-class precision/recall/support and the confusion matrix.

    Precision of a class never predicted is 0 (scikit-learn's `zero_division=0`).
    """
    labels = np.asarray(y_true, dtype=np.int64)
    predicted = predicted_classes(probabilities)
    matrix = confusion_matrix(labels, predicted, len(classes))
    per_class = []
    for i, name in enumerate(classes):
        tp = int(matrix[i, i])
        predicted_i = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        per_class.append(
            ClassMetrics(
                name=name,
                precision=tp / predicted_i if predicted_i else 0.0,
                recall=tp / support if support else 0.0,
                support=support,
            )
        )
    accuracy = float(np.trace(matrix) / max(1, matrix.sum()))
    return TestMetrics(
        loss=cross_entropy(labels, probabilities),
        classes=len(classes),
        accuracy=accuracy,
        per_class=per_class,
        confusion_matrix=matrix.tolist(),
    )
