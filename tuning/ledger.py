"""What the driver knows about each trial of a study, and which one is best."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

# Optuna's names for how a trial ended, used in MLflow tags, the DB and the display.
COMPLETE, PRUNED, FAIL, KILLED, RUNNING = "COMPLETE", "PRUNED", "FAIL", "KILLED", "RUNNING"


@dataclass
class TrialRecord:
    ray_trial_id: str
    number: int
    params: dict[str, Any]
    started: float = field(default_factory=time.time)
    ended: float | None = None
    state: str = RUNNING
    child_run_id: str | None = None
    node_id: str | None = None
    last_result: dict[str, Any] = field(default_factory=dict)
    epochs_logged: set[int] = field(default_factory=set)
    value: float | None = None
    error: str | None = None
    checkpoint_path: str | None = None
    model_uri: str | None = None


class StudyLedger:
    def __init__(self, *, metric: str, direction: str, n_trials: int):
        self.metric = metric
        self.direction = direction
        self.n_trials = n_trials
        self.trials: dict[str, TrialRecord] = {}
        self.started = time.time()
        self.metrics_seen: set[str] = set()

    def add(self, record: TrialRecord) -> None:
        self.trials[record.ray_trial_id] = record

    def get(self, ray_trial_id: str) -> TrialRecord | None:
        return self.trials.get(ray_trial_id)

    def value_of(self, result: dict[str, Any]) -> float | None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    def is_better(self, value: float, than: float) -> bool:
        return value > than if self.direction == "maximize" else value < than

    def best(self) -> TrialRecord | None:
        best: TrialRecord | None = None
        for record in self.trials.values():
            if record.state != COMPLETE or record.value is None:
                continue
            if best is None or self.is_better(record.value, best.value):  # type: ignore[arg-type]
                best = record
        return best

    def counts(self) -> dict[str, int]:
        counts = {COMPLETE: 0, PRUNED: 0, FAIL: 0, KILLED: 0, RUNNING: 0}
        for record in self.trials.values():
            counts[record.state] += 1
        return counts

    def open_trials(self) -> list[TrialRecord]:
        return [r for r in self.trials.values() if r.state == RUNNING]
