"""The chosen model's held-out evaluation (tuning.evaluation.held_out) on the parent run.

Artifacts under `evaluation/`: `per_class.json` and `misclassified.json` as MLflow tables
(the run's Artifacts tab shows them as tables, `mlflow.load_table` reads them back),
`confusion_matrix.json` (numbers: rows true, columns predicted) and
`confusion_matrix.png` (a figure). Metrics: `test_acc`, `test_balanced_acc`,
`test_macro_f1` and per class `test_precision_<class>`, `test_recall_<class>`,
`test_f1_<class>`, `test_support_<class>`, the class name made fit for a metric key.
"""

from __future__ import annotations

import re

from tuning.tracking import runs
from tuning.tracking.recording import StudyEvaluation

FOLDER = "evaluation"
PER_CLASS_TABLE = f"{FOLDER}/per_class.json"
MISCLASSIFIED_TABLE = f"{FOLDER}/misclassified.json"
CONFUSION_JSON = f"{FOLDER}/confusion_matrix.json"
CONFUSION_FIGURE = f"{FOLDER}/confusion_matrix.png"
PER_CLASS_FIGURES = ("precision", "recall", "f1", "support")
# A confusion matrix larger than this is drawn without its numbers: they would not fit.
MAX_ANNOTATED_CLASSES = 30
_NOT_IN_A_KEY = re.compile(r"[^A-Za-z0-9_.-]+")


def class_keys(class_names) -> list[str]:
    """Each class name as a metric key part: MLflow takes letters, digits, `_ . -`
    (and a few more we avoid); others become `_`. Names that meet get `_<index>`."""
    keys, seen = [], set()
    for index, name in enumerate(class_names):
        key = _NOT_IN_A_KEY.sub("_", str(name)).strip("_") or f"class{index}"
        if key in seen:
            key = f"{key}_{index}"
        seen.add(key)
        keys.append(key)
    return keys


def evaluation_metrics(evaluation: StudyEvaluation) -> dict[str, float]:
    metrics = dict(evaluation.metrics)
    prefix = evaluation.split
    for key, row in zip(class_keys(evaluation.class_names), evaluation.per_class):
        for figure in PER_CLASS_FIGURES:
            metrics[f"{prefix}_{figure}_{key}"] = float(row[figure])
    return metrics


def log_evaluation(client, run_id: str, evaluation: StudyEvaluation, *,
                   timestamp_ms: int) -> None:
    """Everything above on run `run_id`. A redone end of study (--resume) logs the same
    again: tables are written once, MLflow would append to them."""
    import pandas as pd

    runs.log_metrics(client, run_id, evaluation_metrics(evaluation), step=0,
                     timestamp_ms=timestamp_ms)
    client.log_dict(run_id, {"split": evaluation.split, "trial_number": evaluation.trial_number,
                             "class_names": list(evaluation.class_names),
                             "rows": "true class", "columns": "predicted class",
                             "matrix": evaluation.confusion}, CONFUSION_JSON)
    client.log_figure(run_id, confusion_figure(evaluation), CONFUSION_FIGURE)
    present = {a.path for a in client.list_artifacts(run_id, FOLDER)}
    columns = ["path", "true", "predicted", "confidence"]
    for path, frame in ((PER_CLASS_TABLE, pd.DataFrame(evaluation.per_class)),
                        (MISCLASSIFIED_TABLE, pd.DataFrame(evaluation.misclassified,
                                                           columns=columns))):
        if path not in present:
            client.log_table(run_id, frame, path)


def confusion_figure(evaluation: StudyEvaluation):
    """A matplotlib Figure made without pyplot: no display, no global state."""
    from matplotlib.figure import Figure

    names = list(evaluation.class_names)
    k = len(names)
    side = min(4 + 0.45 * k, 24)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(evaluation.confusion, cmap="Blues")
    figure.colorbar(image, ax=axes, label="images")
    axes.set_xticks(range(k), names, rotation=90 if k > 8 else 0)
    axes.set_yticks(range(k), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    acc = evaluation.metrics.get(f"{evaluation.split}_acc")
    axes.set_title(f"Confusion matrix, {evaluation.split} split, trial "
                   f"{evaluation.trial_number}" + (f" (accuracy {acc:.3f})" if acc is not None
                                                   else ""))
    if k <= MAX_ANNOTATED_CLASSES:
        top = max((max(row) for row in evaluation.confusion), default=0)
        for t, row in enumerate(evaluation.confusion):
            for p, count in enumerate(row):
                axes.text(p, t, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > top / 2 else "black")
    return figure

