"""What the driver tells a study recorder, and the recorder that records nothing.

launch.py passes in a recorder backed by the Django DB (data_access/recorder.py);
tuning/ only sees this protocol, so it never imports Django. Every method is called
on the driver, in the order: study_started, then per trial trial_started,
trial_result (once per report), trial_finished; then, for a study with a best trial,
study_evaluated (the chosen model on the held-out test split); finally study_finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class StudyStart:
    theme_id: int
    name: str                     # training.run_name: the MLflow parent run's name
    direction: str                # "maximize" | "minimize"
    metric: str
    n_trials: int
    optuna_study_name: str
    optuna_storage: str | None    # URL as the user gave it; None = in memory
    mlflow_experiment_id: str
    mlflow_parent_run_id: str
    resolved_config: dict[str, Any]           # JSON-safe, the four files after merging
    param_space: dict[str, dict[str, Any]]    # dotted name -> {"type", "low", ...}
    ray_job_id: str | None = None
    experiment_path: str | None = None   # Tune's experiment: what `launch.py --resume` takes
    # tuning.data.keys.theme_content_hash: which images and labels the study saw.
    theme_content_hash: str | None = None
    # Where the searcher's prior trials came from ("champion", "study:12", "theme"),
    # each with what was carried over: {"source", "given", "skipped", "transfer"}.
    warm_start: list[dict[str, Any]] | None = None
    started_at: datetime = field(default_factory=datetime.now)


@dataclass(frozen=True)
class TrialStart:
    number: int                   # Optuna's trial number
    ray_trial_id: str
    params: dict[str, Any]        # dotted name -> sampled value
    mlflow_run_id: str | None
    started_at: datetime = field(default_factory=datetime.now)


@dataclass(frozen=True)
class TrialResult:
    number: int
    epoch: int
    metrics: dict[str, float]
    node: str | None


@dataclass(frozen=True)
class TrialEnd:
    number: int
    state: str                    # a TrialState (tuning.states) other than RUNNING
    value: float | None
    error: str | None = None
    ended_at: datetime = field(default_factory=datetime.now)


@dataclass(frozen=True)
class StudyEnd:
    status: str                   # a StudyStatus: COMPLETED, FAILED or KILLED
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial_number: int | None
    registered_model: str | None = None
    registered_version: str | None = None
    error: str | None = None
    ended_at: datetime = field(default_factory=datetime.now)


@dataclass(frozen=True)
class StudyEvaluation:
    """The chosen model (the best trial's checkpoint) scored once on a split that took
    no part in choosing it. Rows of `confusion` are true classes, columns predicted."""
    trial_number: int
    split: str                                  # "test"
    class_names: tuple[str, ...]
    confusion: list[list[int]]
    # One row per class: {"class", "precision", "recall", "f1", "support"}.
    per_class: list[dict[str, Any]]
    # e.g. {"test_acc", "test_balanced_acc", "test_macro_f1"}
    metrics: dict[str, float]
    # Up to 24: {"path" (absolute, as in ThemeSpec), "true", "predicted", "confidence"}.
    misclassified: list[dict[str, Any]] = field(default_factory=list)


class StudyRecorder(Protocol):
    def study_started(self, event: StudyStart) -> None: ...
    def trial_started(self, event: TrialStart) -> None: ...
    def trial_result(self, event: TrialResult) -> None: ...
    def trial_finished(self, event: TrialEnd) -> None: ...
    def study_evaluated(self, event: StudyEvaluation) -> None: ...
    def study_finished(self, event: StudyEnd) -> None: ...


class NullRecorder:
    """For runs with no database: records nothing."""

    def study_started(self, event: StudyStart) -> None:
        pass

    def trial_started(self, event: TrialStart) -> None:
        pass

    def trial_result(self, event: TrialResult) -> None:
        pass

    def trial_finished(self, event: TrialEnd) -> None:
        pass

    def study_evaluated(self, event: StudyEvaluation) -> None:
        pass

    def study_finished(self, event: StudyEnd) -> None:
        pass
