"""The chosen model's held-out evaluation as the study page shows it: the confusion
matrix with shaded cells, per-class figures, the overall metrics and the misclassified
test images, each matched to an image of the study's own theme.

The data is `TuningStudy.evaluation`, the driver's tuning.tracking.recording
.StudyEvaluation as JSON. The page must render whatever an old or hand-edited row holds,
so a row of the wrong shape gives a one-line notice instead of an error page.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from data_access import selectors
from data_access.selectors import StudyInfo
from tuning.numbers import is_finite_number

# Shades of a confusion-matrix cell (CSS classes cm-d0..cm-d5 and cm-o0..cm-o5): the
# share of its row, so that a small class reads as clearly as a large one.
SHADES = 5
MAX_MISCLASSIFIED = 24


@dataclass(frozen=True)
class Cell:
    count: int
    shade: int        # 0 (empty) to SHADES (the whole row)
    diagonal: bool    # a correct prediction


@dataclass(frozen=True)
class MatrixRow:
    true_class: str
    cells: tuple[Cell, ...]
    total: int


@dataclass(frozen=True)
class ClassFigures:
    name: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int | None


@dataclass(frozen=True)
class Misclassified:
    image_id: int | None   # None: the path is no image of this study's theme
    name: str              # the file name, shown when there is no image to link
    true: str
    predicted: str
    confidence: float | None


@dataclass(frozen=True)
class Evidence:
    trial_number: int | None
    split: str
    class_names: tuple[str, ...]
    matrix: tuple[MatrixRow, ...]
    per_class: tuple[ClassFigures, ...]
    metrics: tuple[tuple[str, float], ...]
    misclassified: tuple[Misclassified, ...]


class UnreadableEvaluation(Exception):
    """The recorded evaluation has not the shape the driver writes."""


def _shade(count: int, total: int) -> int:
    return math.ceil(SHADES * count / total) if total and count > 0 else 0


def _matrix(class_names: tuple[str, ...], confusion: Any) -> tuple[MatrixRow, ...]:
    if not isinstance(confusion, list) or len(confusion) != len(class_names):
        raise UnreadableEvaluation("confusion")
    rows = []
    for i, (name, counts) in enumerate(zip(class_names, confusion)):
        if not isinstance(counts, list) or len(counts) != len(class_names):
            raise UnreadableEvaluation("confusion row")
        counts = [int(c) for c in counts]
        total = sum(counts)
        rows.append(MatrixRow(name, tuple(Cell(c, _shade(c, total), i == j)
                                          for j, c in enumerate(counts)), total))
    return tuple(rows)


def _number(value: Any) -> float | None:
    return float(value) if is_finite_number(value) else None


def _per_class(rows: Any) -> tuple[ClassFigures, ...]:
    figures = []
    for row in rows or ():
        support = row.get("support")
        figures.append(ClassFigures(
            name=str(row.get("class", "")), precision=_number(row.get("precision")),
            recall=_number(row.get("recall")), f1=_number(row.get("f1")),
            support=int(support) if is_finite_number(support) else None))
    return tuple(figures)


def _misclassified(rows: Any, theme_id: int) -> tuple[Misclassified, ...]:
    rows = list(rows or ())[:MAX_MISCLASSIFIED]
    paths = [row["path"] for row in rows if isinstance(row.get("path"), str)]
    # Only an image of this study's theme is linked; any other path stays text.
    image_ids = selectors.theme_image_ids_by_path(theme_id=theme_id, paths=paths)
    found = []
    for row in rows:
        path = row.get("path") if isinstance(row.get("path"), str) else ""
        found.append(Misclassified(
            image_id=image_ids.get(path), name=os.path.basename(path),
            true=str(row.get("true", "")), predicted=str(row.get("predicted", "")),
            confidence=_number(row.get("confidence"))))
    return tuple(found)


def _evidence(evaluation: dict[str, Any], theme_id: int) -> Evidence:
    class_names = tuple(str(n) for n in evaluation.get("class_names") or ())
    metrics = evaluation.get("metrics") or {}
    trial_number = evaluation.get("trial_number")
    return Evidence(
        trial_number=trial_number if isinstance(trial_number, int) else None,
        split=str(evaluation.get("split", "")),
        class_names=class_names,
        matrix=_matrix(class_names, evaluation.get("confusion")),
        per_class=_per_class(evaluation.get("per_class")),
        metrics=tuple((str(k), float(v)) for k, v in sorted(metrics.items())
                      if is_finite_number(v)),
        misclassified=_misclassified(evaluation.get("misclassified"), theme_id))


def study_evidence(study: StudyInfo) -> Evidence | None:
    """The study's evaluation ready for the page; None while it has none.
    Raises UnreadableEvaluation for a row of another shape."""
    if study.evaluation is None:
        return None
    if not isinstance(study.evaluation, dict):
        raise UnreadableEvaluation("evaluation")
    try:
        return _evidence(study.evaluation, study.theme_id)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UnreadableEvaluation(str(exc)) from exc
