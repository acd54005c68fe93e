"""What the driver knows about each trial of a study, and which one is best."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

from tuning.config.params import REPORTED_METRICS
from tuning.numbers import is_finite_number
from tuning.states import TrialState

# How a trial ended (tuning.states), by the short names the callbacks use.
COMPLETE, PRUNED, FAIL = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
KILLED, RUNNING = TrialState.KILLED, TrialState.RUNNING
FINAL_STATES = (COMPLETE, PRUNED, FAIL)  # decided: a resumed study never changes these
# What a snapshot keeps of a trial's last result (see _record_state).
SNAPSHOT_KEYS = frozenset({"epoch", "training_iteration", *REPORTED_METRICS})


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
    pid: int | None = None        # the worker process now running it (changes on a retry)
    last_result: dict[str, Any] = field(default_factory=dict)
    epochs_logged: set[int] = field(default_factory=set)
    value: float | None = None
    error: str | None = None
    checkpoint_path: str | None = None
    checkpoint_removed: bool = False   # its model is in MLflow (checkpoint_pruning)
    model_uri: str | None = None
    retries: int = 0              # times Tune restarted it after an error (FailureConfig)
    resumed_from_epoch: int | None = None


class StudyLedger:
    def __init__(self, *, metric: str, direction: str, n_trials: int):
        self.metric = metric
        self.direction = direction
        self.n_trials = n_trials
        self.trials: dict[str, TrialRecord] = {}
        self.started = time.time()
        self.metrics_seen: set[str] = set()
        # Tune snapshots the ledger after every trial checkpoint (num_to_keep): the state
        # of a decided trial is built once, not at every snapshot of a growing study.
        self._decided_states: dict[str, tuple[tuple, dict[str, Any]]] = {}

    def add(self, record: TrialRecord) -> None:
        self.trials[record.ray_trial_id] = record

    def get(self, ray_trial_id: str) -> TrialRecord | None:
        return self.trials.get(ray_trial_id)

    def value_of(self, result: dict[str, Any]) -> float | None:
        value = result.get(self.metric)
        if is_finite_number(value):
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

    # -- snapshots: Tune saves these with its experiment state, so that a resumed
    # study knows each trial's Optuna number, child run and logged epochs.

    def to_state(self) -> dict[str, Any]:
        return {"trials": [self._state_of(r) for r in self.trials.values()],
                "started": self.started, "metrics_seen": sorted(self.metrics_seen)}

    def _state_of(self, record: TrialRecord) -> dict[str, Any]:
        if record.state not in FINAL_STATES:
            return _record_state(record)
        # What can still change once decided: its model (logged after the trial's end),
        # a checkpoint found after a resume, the fields a reconcile sets.
        key = (record.state, record.value, record.error, record.ended,
               record.checkpoint_path, record.checkpoint_removed, record.model_uri,
               len(record.epochs_logged))
        cached = self._decided_states.get(record.ray_trial_id)
        if cached is None or cached[0] != key:
            cached = (key, _record_state(record))
            self._decided_states[record.ray_trial_id] = cached
        return cached[1]

    def load_state(self, state: dict[str, Any]) -> None:
        self.trials = {}
        self._decided_states = {}
        for data in state["trials"]:
            data = dict(data, epochs_logged=set(data["epochs_logged"]))
            self.add(TrialRecord(**data))
        self.started = state["started"]
        self.metrics_seen = set(state["metrics_seen"])


def _record_state(record: TrialRecord) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies the whole last result before it is cut.
    # Tune pickles the state at once; params are flat names -> values.
    data = {f.name: getattr(record, f.name) for f in fields(record)}
    data["params"] = dict(record.params)
    data["epochs_logged"] = sorted(record.epochs_logged)
    # The last result is kept for its metrics only: Tune's auto-filled fields (config,
    # hostnames, timings) would only grow every snapshot.
    data["last_result"] = {k: v for k, v in record.last_result.items()
                           if isinstance(v, (int, float, str, bool)) and k in SNAPSHOT_KEYS}
    return data
