"""The driver's one Ray Tune callback: it keeps the ledger and tells MLflow, the study
recorder and the progress display what happened to each trial.

Ray's MLflowLoggerCallback knows no parent runs (ray#19909), so child runs are made
here, tagged with mlflow.parentRunId. A retried trial keeps its child run.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.air._internal.json import SafeFallbackEncoder
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from tuning.config.params import EPOCH_METRICS, is_final_result
from tuning.optuna_adapter import MLFLOW_RUN_ATTR
from tuning.recovery import trial_folders
from tuning.tracking import output, runs
from tuning.tracking.ledger import (
    COMPLETE,
    FAIL,
    FINAL_STATES,
    KILLED,
    PRUNED,
    RUNNING,
    StudyLedger,
    TrialRecord,
)
from tuning.tracking.progress import ProgressDisplay
from tuning.tracking.recording import StudyRecorder, TrialEnd, TrialResult, TrialStart

log = output.log

MLFLOW_STATUS = {COMPLETE: "FINISHED", PRUNED: "KILLED", FAIL: "FAILED", KILLED: "KILLED"}
# Tune adds no CSV, JSON or TensorBoard logger of its own (tune/utils/callback.py).
NO_AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
END_REASON = "themetune.end_reason"
RETRIES = "themetune.retries"
RETRY_REASON = "themetune.retry_reason"   # one tag per retry: themetune.retry_reason_1, ...
RESUMED_FROM = "themetune.resumed_from_epoch"
ORPHAN_REASON = ("started after the last state snapshot of a driver that died: the resumed "
                 "study could not continue this run (its trial runs again in a new one, or "
                 "not at all)")


class StudyCallback(tune.Callback):
    def __init__(self, *, ledger: StudyLedger, mlflow_study: runs.MlflowStudy,
                 trial_number: Callable[[str], int], recorder: StudyRecorder,
                 progress: ProgressDisplay, log_model: Callable[[TrialRecord], None] | None,
                 searcher=None, experiment_path: str | None = None):
        self.ledger = ledger
        # Where a resume looks for the final checkpoint of a trial whose end reached
        # MLflow after Tune's last snapshot (_reconcile_record).
        self.experiment_path = experiment_path
        self.searcher = searcher  # a StudySearch: told what a resume finds decided
        self.mlflow = mlflow_study
        self.trial_number = trial_number
        self.recorder = recorder
        self.progress = progress
        self.log_model = log_model  # None: models are logged after the study, if at all
        # Ray trial ids whose child run a crash or stop ended: reopened when they resume.
        self._reopen: set[str] = set()

    # -- Ray Tune hooks ---------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        record = self.ledger.get(trial.trial_id)
        if record is not None:  # a retry, or a resumed trial: same trial, same child run
            if record.state in FINAL_STATES:
                # Its end reached MLflow after Tune's last snapshot: Tune re-runs its
                # last epochs, but what is recorded stays as it was.
                return
            record.state = RUNNING
            if trial.trial_id in self._reopen:
                self._reopen.discard(trial.trial_id)
                runs.reopen_run(self.mlflow.client, record.child_run_id)
                self.recorder.trial_started(TrialStart(
                    number=record.number, ray_trial_id=trial.trial_id, params=record.params,
                    mlflow_run_id=record.child_run_id))
            self.progress.update(self.ledger)
            return
        record = TrialRecord(ray_trial_id=trial.trial_id,
                             number=self.trial_number(trial.trial_id),
                             params=dict(trial.config))
        record.child_run_id = runs.create_child_run(
            self.mlflow, name=runs.trial_model_name(record.number),
            tags={"ray.trial_id": trial.trial_id, "optuna.trial_number": str(record.number)})
        if self.searcher is not None:  # optuna-dashboard's way to the trial's MLflow run
            self.searcher.tag_trial(trial.trial_id, {MLFLOW_RUN_ATTR: record.child_run_id})
        runs.log_params(self.mlflow.client, record.child_run_id, record.params)
        self.ledger.add(record)
        self.recorder.trial_started(TrialStart(number=record.number,
                                               ray_trial_id=trial.trial_id,
                                               params=record.params,
                                               mlflow_run_id=record.child_run_id))
        self.progress.update(self.ledger)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        # Tune's loop turns several times a second: a progress line still comes every
        # min_interval_s while no trial reports (a long epoch, a trial waiting for room).
        # The first line waits for the first trial, which says more than "0 running".
        if self.ledger.trials:
            self.progress.update(self.ledger)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        record = self.ledger.get(trial.trial_id)
        if record is None or record.state in FINAL_STATES:
            return
        metrics, epoch, timestamp_ms = runs.result_metrics(result)
        self.ledger.metrics_seen.update(metrics)
        client = self.mlflow.client
        tags = {}
        if record.node_id != result.get("node_id") and result.get("node_id"):
            record.node_id = str(result["node_id"])
            tags.update({"ray.node_id": record.node_id,
                         "ray.node_ip": str(result.get("node_ip", ""))})
        # The worker's pid changes when a retry or a resume moves the trial: it says
        # which process to look at (or, in a test, to kill).
        if result.get("pid") and result["pid"] != record.pid:
            record.pid = int(result["pid"])
            tags["ray.pid"] = str(record.pid)
        # After a retry or a resume: the checkpoint's epoch it went on from, so that the
        # run shows the epochs before it were not trained twice.
        resumed = int(result.get("resumed_from_epoch") or 0)
        if resumed and resumed != record.resumed_from_epoch:
            record.resumed_from_epoch = resumed
            tags[RESUMED_FROM] = str(resumed)
        if tags:
            runs.set_tags(client, record.child_run_id, tags)
        # A retried trial re-reports epochs after its checkpoint: log each step once.
        # The trial's logged model links the last result's points later
        # (runs.link_model_metrics): as logged, or, for an epoch logged before (by this
        # driver or one before a resume), without its time, so that the run's own
        # points are linked and no second point is added.
        if epoch in record.epochs_logged:
            record.last_result = {k: v for k, v in result.items() if k != "timestamp"}
        else:
            record.last_result = result
            record.epochs_logged.add(epoch)
            runs.log_metrics(client, record.child_run_id, metrics, step=epoch,
                             timestamp_ms=timestamp_ms)
            self.recorder.trial_result(TrialResult(number=record.number, epoch=epoch,
                                                   metrics=metrics, node=record.node_id))
        self.progress.update(self.ledger)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        record = self.ledger.get(trial.trial_id)
        if record is None:
            return
        if record.state in FINAL_STATES:
            # Decided before a crash (see on_trial_start); only its checkpoint was missing.
            if record.checkpoint_path is None and trial.checkpoint is not None:
                record.checkpoint_path = trial.checkpoint.path
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
        if record is None or record.state in FINAL_STATES:
            return
        self._finish(record, FAIL, reason=_error_reason(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        # The trial errored and FailureConfig.max_failures lets Tune run it again from its
        # last checkpoint: keep the error that cost a retry on its child run.
        record = self.ledger.get(trial.trial_id)
        if record is None or record.state in FINAL_STATES:
            return
        record.retries += 1
        reason = _error_reason(trial)
        if record.node_id:   # a node's loss shows only as a lost actor: say where it ran
            reason = f"{reason} [on node {record.node_id}]"
        log.warning("Trial %d failed (%s); retry %d from its last checkpoint.",
                    record.number, reason, record.retries)
        runs.set_tags(self.mlflow.client, record.child_run_id,
                      {RETRIES: str(record.retries),
                       f"{RETRY_REASON}_{record.retries}": reason})

    # -- helpers -----------------------------------------------------------------------

    def _finish(self, record: TrialRecord, state: str, *, reason: str | None = None) -> None:
        record.state = state
        record.error = reason
        record.ended = time.time()
        client = self.mlflow.client
        tags = {"optuna.trial_state": state}
        if reason:
            tags[END_REASON] = reason
        runs.set_tags(client, record.child_run_id, tags)
        runs.end_run(client, record.child_run_id, MLFLOW_STATUS[state])
        self.recorder.trial_finished(TrialEnd(number=record.number, state=state,
                                              value=record.value, error=reason))
        self.progress.update(self.ledger, force=True)

    # -- Tune's experiment snapshots: the ledger survives a driver crash ----------------

    def get_state(self) -> dict[str, Any]:
        return {"ledger": self.ledger.to_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ledger.load_state(state["ledger"])
        self._reconcile()

    def _reconcile(self) -> None:
        """After Tune restored a snapshot: take in what MLflow recorded between that
        snapshot and the crash, so that nothing is logged twice or lost."""
        client = self.mlflow.client
        by_run = {r.child_run_id: r for r in self.ledger.trials.values()}
        orphans = []
        for run in runs.child_runs(self.mlflow):
            record = by_run.get(run.info.run_id)
            if record is None:
                orphans.append(run)
            elif record.state == RUNNING:
                self._reconcile_record(record, run)
        numbers = []
        for run in orphans:
            # Started after the snapshot: Tune restarts its trial (under this number if
            # the searcher knew it) or never runs it. Its partial epochs would only
            # duplicate or contradict the trial's run: kept, FAILED and deleted (MLflow
            # can restore deleted runs), so each trial has one live child run.
            runs.set_tags(client, run.info.run_id, {END_REASON: ORPHAN_REASON,
                                                    "optuna.trial_state": FAIL})
            runs.end_run(client, run.info.run_id, "FAILED")
            runs.delete_run(client, run.info.run_id)
            number = run.data.tags.get("optuna.trial_number", "")
            if number.isdigit():
                numbers.append(int(number))
                self.recorder.trial_finished(TrialEnd(number=int(number), state=FAIL,
                                                      value=None, error=ORPHAN_REASON))
        if self.searcher is not None:
            self.searcher.reserve_numbers(numbers)
        log.info("Resumed: %d trials in the ledger, %d orphan child runs deleted.",
                 len(self.ledger.trials), len(orphans))

    def _reconcile_record(self, record: TrialRecord, run) -> None:
        client = self.mlflow.client
        record.epochs_logged |= runs.logged_steps(client, run.info.run_id, EPOCH_METRICS)
        state = run.data.tags.get("optuna.trial_state")
        if run.info.status == "RUNNING":
            return
        if state not in FINAL_STATES:
            self._reopen.add(record.ray_trial_id)  # stopped or killed: it will resume
            return
        record.state = state
        record.error = run.data.tags.get(END_REASON)
        record.value = run.data.metrics.get(self.ledger.metric) if state == COMPLETE else None
        record.ended = (run.info.end_time or time.time() * 1000) / 1000
        if state == COMPLETE:
            record.model_uri = runs.logged_model_uri(client, self.mlflow.experiment_id,
                                                     run.info.run_id)
            # The snapshot names the checkpoint Tune had before the trial's last one,
            # which checkpoint.num_to_keep may have removed since: Tune's re-run of the
            # trial then fails, and the final checkpoint is found in its folder instead.
            if self.experiment_path and record.checkpoint_path is None:
                record.checkpoint_path = trial_folders.final_checkpoint(
                    self.experiment_path, record.ray_trial_id)
        if self.searcher is not None:
            self.searcher.decide(record.ray_trial_id, state, record.value)
        self.recorder.trial_finished(TrialEnd(number=record.number, state=state,
                                              value=record.value, error=record.error))

    def close_open_trials(self, state: str = KILLED, reason: str = "study stopped") -> None:
        """At the end of a stopped study: trials still running end KILLED, not RUNNING."""
        for record in self.ledger.open_trials():
            self._finish(record, state, reason=reason)


def file_loggers() -> list:
    """Stand-ins for Tune's default CSV, JSON and TensorBoard loggers (Tune adds its own
    only where none of a kind is given). Theirs write result.json, progress.csv and an
    event file per trial into the driver's staging folder, which Tune copies whole to
    the storage at every experiment snapshot, and checkpoint.num_to_keep forces one per
    trial checkpoint: a cost per trial that grew with the trials done. MLflow and the DB
    keep the metrics; only params.json, which a resume reads, is still written, once per
    trial and straight to the storage.

    TensorBoard's is turned off by Tune's own switch instead of a stand-in: Tune prints
    "To visualize your results with TensorBoard, run ..." whenever a logger of that kind
    is given, for event files nobody writes. The switch is read when the Tuner runs, in
    this driver process only."""
    os.environ[NO_AUTO_LOGGERS_ENV] = "1"
    return [_ParamsFile(), _NoCsvFile()]


class _WritesNothing:
    """The logger methods Tune calls, as no-ops (mixed in before Tune's logger class, so
    that Tune still sees a logger of that kind and adds none of its own)."""

    def log_trial_start(self, trial) -> None:
        pass

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        pass

    def log_trial_end(self, trial, failed: bool = False) -> None:
        pass


class _ParamsFile(_WritesNothing, JsonLoggerCallback):
    def log_trial_start(self, trial) -> None:
        storage = trial.storage
        fs, folder = storage.storage_filesystem, storage.trial_fs_path
        fs.create_dir(folder, recursive=True)
        text = json.dumps(trial.config, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        with fs.open_output_stream(f"{folder}/params.json") as out:
            out.write(text.encode())


class _NoCsvFile(_WritesNothing, CSVLoggerCallback):
    pass


def _error_reason(trial) -> str:
    text = None
    try:
        # Tune writes the trace to the trial's local folder first and syncs it to the
        # storage path later: get_error() (storage) may not see it yet.
        local = trial.error_file
        text = Path(local).read_text(errors="replace") if local and Path(local).is_file() \
            else trial.get_error()
    except (OSError, ValueError):
        text = None
    if not text:
        return "trial raised an error"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return "trial raised an error"
    # Our own errors by their names alone: "tuning.trial.trainable.X: ..." reads "X: ...".
    return re.sub(r"^tuning\.[\w.]+\.(\w+): ", r"\1: ", lines[-1])[:500]
