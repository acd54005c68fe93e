"""The driver's one Ray Tune callback: it keeps the ledger and tells MLflow, the study
recorder and the progress display what happened to each trial.

Ray's MLflowLoggerCallback knows no parent runs (ray#19909), so child runs are made
here, tagged with mlflow.parentRunId. A retried trial keeps its child run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from tuning import mlflow_runs
from tuning.ledger import COMPLETE, FAIL, KILLED, PRUNED, RUNNING, StudyLedger, TrialRecord
from tuning.params import REPORTED_METRICS, is_final_result
from tuning.progress import ProgressDisplay
from tuning.recording import StudyRecorder, TrialEnd, TrialResult, TrialStart

log = logging.getLogger("themetune")

MLFLOW_STATUS = {COMPLETE: "FINISHED", PRUNED: "KILLED", FAIL: "FAILED", KILLED: "KILLED"}


class StudyCallback(tune.Callback):
    def __init__(self, *, ledger: StudyLedger, mlflow_study: mlflow_runs.MlflowStudy,
                 trial_number: Callable[[str], int], recorder: StudyRecorder,
                 progress: ProgressDisplay, log_model: Callable[[TrialRecord], None] | None):
        self.ledger = ledger
        self.mlflow = mlflow_study
        self.trial_number = trial_number
        self.recorder = recorder
        self.progress = progress
        self.log_model = log_model  # None: models are logged after the study, if at all

    # -- Ray Tune hooks ---------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        record = self.ledger.get(trial.trial_id)
        if record is not None:  # a retry after a failure: same trial, same child run
            record.state = RUNNING
            return
        record = TrialRecord(ray_trial_id=trial.trial_id,
                             number=self.trial_number(trial.trial_id),
                             params=dict(trial.config))
        client = self.mlflow.client
        run = client.create_run(
            self.mlflow.experiment_id, run_name=f"trial_{record.number}",
            tags={mlflow_runs.PARENT_TAG: self.mlflow.parent_run_id,
                  "ray.trial_id": trial.trial_id, "optuna.trial_number": str(record.number)})
        record.child_run_id = run.info.run_id
        mlflow_runs.log_params(client, record.child_run_id, record.params)
        self.ledger.add(record)
        self.recorder.trial_started(TrialStart(number=record.number,
                                               ray_trial_id=trial.trial_id,
                                               params=record.params,
                                               mlflow_run_id=record.child_run_id))
        self.progress.update(self.ledger)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        record = self.ledger.get(trial.trial_id)
        if record is None:
            return
        record.last_result = result
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: result[k] for k in REPORTED_METRICS if k in result}
        self.ledger.metrics_seen.update(metrics)
        client = self.mlflow.client
        if record.node_id is None and result.get("node_id"):
            record.node_id = str(result["node_id"])
            mlflow_runs.set_tags(client, record.child_run_id, {
                "ray.node_id": record.node_id, "ray.node_ip": str(result.get("node_ip", ""))})
        # A retried trial re-reports epochs after its checkpoint: log each step once.
        if epoch not in record.epochs_logged:
            record.epochs_logged.add(epoch)
            mlflow_runs.log_metrics(client, record.child_run_id, metrics, step=epoch,
                                    timestamp_ms=int(result.get("timestamp", time.time()) * 1000))
            self.recorder.trial_result(TrialResult(number=record.number, epoch=epoch,
                                                   metrics=metrics, node=record.node_id))
        self.progress.update(self.ledger)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        record = self.ledger.get(trial.trial_id)
        if record is None:
            return
        result = record.last_result
        if not is_final_result(result):
            self._finish(record, PRUNED, reason="stopped early by the scheduler")
            return
        value = self.ledger.value_of(result)
        if value is None:
            self._finish(record, FAIL, reason=f"{self.ledger.metric} is not a finite number "
                                              f"({result.get(self.ledger.metric)!r})")
            return
        record.value = value
        checkpoint = trial.checkpoint
        record.checkpoint_path = checkpoint.path if checkpoint is not None else None
        if checkpoint is None:
            log.warning("Trial %d (%s): no checkpoint was saved; its model cannot be logged.",
                        record.number, trial.trial_id)
        elif self.log_model is not None:
            self.log_model(record)
        self._finish(record, COMPLETE)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        record = self.ledger.get(trial.trial_id)
        if record is None:
            return
        self._finish(record, FAIL, reason=_error_reason(trial))

    # -- helpers -----------------------------------------------------------------------

    def _finish(self, record: TrialRecord, state: str, *, reason: str | None = None) -> None:
        record.state = state
        record.error = reason
        record.ended = time.time()
        client = self.mlflow.client
        tags = {"optuna.trial_state": state}
        if reason:
            tags["themetune.end_reason"] = reason
        mlflow_runs.set_tags(client, record.child_run_id, tags)
        mlflow_runs.end_run(client, record.child_run_id, MLFLOW_STATUS[state])
        self.recorder.trial_finished(TrialEnd(number=record.number, state=state,
                                              value=record.value, error=reason))
        self.progress.update(self.ledger, force=True)

    def close_open_trials(self, state: str = KILLED, reason: str = "study stopped") -> None:
        """At the end of a stopped study: trials still running end KILLED, not RUNNING."""
        for record in self.ledger.open_trials():
            self._finish(record, state, reason=reason)


def _error_reason(trial) -> str:
    text = None
    try:
        text = trial.get_error()
    except (OSError, ValueError):
        text = None
    if not text:
        return "trial raised an error"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1][:500] if lines else "trial raised an error"


def checkpoint_folder(record: TrialRecord) -> Path | None:
    return Path(record.checkpoint_path) if record.checkpoint_path else None


def plain(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in REPORTED_METRICS}
