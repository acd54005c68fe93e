"""Classification figures from a confusion matrix (rows true, columns predicted).

A matrix may have more columns than rows: the extra ones count predictions outside the
theme's classes (a champion trained on another class list, rescored on today's theme).
They lower the recall of the true class and the precision of no class. Numpy only:
every trial computes its per-epoch figures with it.
"""

from __future__ import annotations

import math

import numpy as np

# Study metric name -> what it measures, whatever its split prefix (train_/valid_/test_).
KINDS = ("balanced_acc", "macro_f1", "image_acc", "acc", "loss")
# Probabilities are clipped here for a loss: a class the model does not know costs
# -log(1e-7) = 16.1, not infinity.
MIN_PROBABILITY = 1e-7


def metric_kind(metric: str) -> str:
    """"valid_macro_f1" -> "macro_f1"; "test_image_acc" -> "image_acc"."""
    name = metric.split("_", 1)[1] if "_" in metric else metric
    if name not in KINDS:
        raise ValueError(f"unknown metric {metric!r}")
    return name


def confusion_matrix(true, predicted, n_classes: int, *, n_columns: int | None = None
                     ) -> np.ndarray:
    """Counts of (true, predicted) pairs; labels are indices, predictions may go up to
    n_columns - 1 (default n_classes)."""
    width = n_columns or n_classes
    true = np.asarray(true, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    counts = np.bincount(true * width + predicted, minlength=n_classes * width)
    return counts.reshape(n_classes, width)


def accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion[:, :confusion.shape[0]]) / total) if total else 0.0


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 and support of each class (row). A class never predicted
    has precision 0, one with no images recall 0, and F1 is 0 when both are."""
    n = confusion.shape[0]
    c = confusion.astype(np.float64)
    hits = np.diag(c[:, :n])
    support = c.sum(axis=1)
    predicted = c[:, :n].sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(n), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1,
            "support": support.astype(np.int64)}


def balanced_accuracy(confusion: np.ndarray) -> float:
    """The mean recall over the classes that have images: accuracy as if every class
    were equally common (sklearn's balanced_accuracy_score)."""
    stats = per_class(confusion)
    present = stats["support"] > 0
    return float(stats["recall"][present].mean()) if present.any() else 0.0


def macro_f1(confusion: np.ndarray) -> float:
    """The unweighted mean F1 over every class of the theme (sklearn's f1_score with
    average="macro", labels=all classes, zero_division=0)."""
    f1 = per_class(confusion)["f1"]
    return float(f1.mean()) if len(f1) else 0.0


def score(kind: str, labels, predicted, n_classes: int, *, true_probability=None) -> float:
    """A metric of `kind` for per-image predictions (class indices; n_classes stands for
    a class the theme does not have). A loss needs each image's probability of its true
    class (`true_probability`)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return math.nan
    if kind == "loss":
        picked = np.asarray(true_probability, dtype=np.float64)
        return float(-np.log(np.clip(picked, MIN_PROBABILITY, 1.0)).mean())
    confusion = confusion_matrix(labels, predicted, n_classes, n_columns=n_classes + 1)
    if kind in ("acc", "image_acc"):
        return accuracy(confusion)
    if kind == "balanced_acc":
        return balanced_accuracy(confusion)
    if kind == "macro_f1":
        return macro_f1(confusion)
    raise ValueError(f"unknown metric kind {kind!r}")
