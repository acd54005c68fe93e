"""What a resume finds after a crash, staged deterministically: the windows between
Tune's last snapshot and the crash that a SIGKILL hits only by chance.

A real MLflow store (SQLite) and a real Optuna study (in memory and in SQLite); the
callback and searcher are driven through the hooks Tune calls, in Tune's order, with
the snapshot taken where the crash test cannot aim: mid-trial, before a trial's end
reached MLflow, before a trial had started.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import optuna
import optuna.distributions as od
import pytest
from mlflow.tracking import MlflowClient

from tuning.errors import StudyFailedError
from tuning.optuna_adapter import StudySearch, open_storage
from tuning.tracking import runs
from tuning.tracking.callbacks import ORPHAN_REASON, StudyCallback
from tuning.tracking.ledger import COMPLETE, RUNNING, StudyLedger
from tuning.tracking.models_io import ModelLogger
from tuning.tracking.progress import ProgressDisplay
from tuning.tracking.recording import NullRecorder

SPACE = {"training.learning_rate": od.FloatDistribution(1e-4, 1e-1, log=True)}


def _final(epoch: int, acc: float) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "valid_loss": 1.0,
            "valid_acc": 0.5, "test_loss": 1.0, "test_acc": acc, "pid": 11}


def _epoch(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "valid_loss": 1.0,
            "valid_acc": 0.5, "pid": 11}


class Driver:
    """One driver process: its searcher and callback, fed as Tune feeds them."""

    def __init__(self, study: runs.MlflowStudy, storage_url, tmp_path: Path,
                 experiment_path: str | None = None):
        self.searcher = StudySearch(space=SPACE, metric="test_acc", mode="max",
                                    sampler=optuna.samplers.TPESampler(seed=1),
                                    study_name="recon", storage=open_storage(storage_url))
        self.searcher.origin = study.parent_run_id
        self.callback = StudyCallback(
            ledger=StudyLedger(metric="test_acc", direction="maximize", n_trials=5),
            mlflow_study=study, trial_number=self.searcher.trial_number,
            recorder=NullRecorder(), progress=ProgressDisplay(min_interval_s=3600),
            log_model=None, searcher=self.searcher, experiment_path=experiment_path)
        self.tmp_path = tmp_path

    def trial(self, trial_id: str, checkpoint: str | None = None):
        config = self.searcher.suggest(trial_id)
        ckpt = SimpleNamespace(path=checkpoint) if checkpoint else None
        return SimpleNamespace(trial_id=trial_id, config=config or {}, checkpoint=ckpt,
                               error_file=None, get_error=lambda: None)

    def start(self, trial) -> None:
        self.callback.on_trial_start(iteration=0, trials=[], trial=trial)

    def report(self, trial, result) -> None:
        self.searcher.on_trial_result(trial.trial_id, result)
        self.callback.on_trial_result(iteration=0, trials=[], trial=trial, result=result)

    def complete(self, trial, result) -> None:
        self.searcher.on_trial_complete(trial.trial_id, result)
        self.callback.on_trial_complete(iteration=0, trials=[], trial=trial)

    def snapshot(self):
        """What Tune's save_to_dir keeps: the searcher's pickle and the callback state."""
        path = self.tmp_path / f"searcher-{id(self)}.pkl"
        self.searcher.save(str(path))
        return path, copy.deepcopy(self.callback.get_state())

    def restore(self, snap) -> None:
        """What TuneController.resume does, in its order: searcher, then callbacks."""
        path, state = snap
        self.searcher.restore(str(path))
        self.callback.set_state(state)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_reliability_resume_reconciles_what_happened_after_the_snapshot(tmp_path, storage):
    url = None if storage == "memory" else f"sqlite:///{tmp_path / 'optuna.db'}"
    study = runs.open_study_runs(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="recon",
        run_name="parent", tags={"themetune.role": "parent"})
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    # -- the driver that will die
    dead = Driver(study, url, tmp_path)
    done, late, stopped = (dead.trial(t, checkpoint=str(tmp_path / t)) for t in "abc")
    for trial in (done, late, stopped):
        dead.start(trial)
    dead.report(done, _final(1, 0.5))
    dead.complete(done, _final(1, 0.5))
    dead.report(late, _epoch(1))
    dead.report(stopped, _epoch(1))
    snap = dead.snapshot()
    # After the snapshot: `late` ends (its end reaches MLflow and Optuna), `stopped`
    # is marked KILLED by a Ctrl-C, and `orphan` starts and logs an epoch.
    dead.report(late, _final(2, 0.9))
    dead.complete(late, _final(2, 0.9))
    dead.callback._finish(dead.callback.ledger.get("c"), "KILLED", reason="interrupted")
    orphan = dead.trial("d")
    dead.start(orphan)
    dead.report(orphan, _epoch(1))
    orphan_number = dead.callback.ledger.get("d").number
    orphan_run = dead.callback.ledger.get("d").child_run_id

    # -- the resumed driver: fresh objects, state from the snapshot
    live = Driver(study, url, tmp_path)
    live.restore(snap)
    ledger = live.callback.ledger

    # The orphan's run is FAILED, says why, and is deleted: one live run per trial.
    gone = client.get_run(orphan_run)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "FAILED"
    assert gone.data.tags["themetune.end_reason"] == ORPHAN_REASON
    # `late` is decided as MLflow recorded it; Tune will re-run its last epoch for nothing.
    record = ledger.get("b")
    assert (record.state, record.value, record.epochs_logged) == (COMPLETE, 0.9, {1, 2})
    # `stopped` will resume into its own child run, set back to RUNNING when it starts.
    assert ledger.get("c").state == RUNNING
    resumed = live.trial("c")
    live.start(resumed)
    assert client.get_run(ledger.get("c").child_run_id).info.status == "RUNNING"

    # Tune re-runs `late` from its snapshot checkpoint: nothing is logged twice, the
    # outcome stays, Optuna is told the recorded value.
    rerun = live.trial("b", checkpoint=str(tmp_path / "b"))
    live.start(rerun)
    live.report(rerun, _final(2, 0.1))
    live.complete(rerun, _final(2, 0.1))
    assert ledger.get("b").value == 0.9 and ledger.get("b").checkpoint_path
    history = client.get_metric_history(ledger.get("b").child_run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(2, 0.9)]

    # A new trial never reuses the orphan's number; the orphan's Optuna trial is closed.
    new = live.trial("e")
    live.start(new)
    assert ledger.get("e").number > orphan_number
    live.report(resumed, _final(2, 0.7))
    live.complete(resumed, _final(2, 0.7))
    live.report(new, _final(2, 0.6))
    live.complete(new, _final(2, 0.6))
    states = {t.number: t.state.name for t in live.searcher.study.trials}
    assert states[ledger.get("b").number] == "COMPLETE"
    assert live.searcher.study.trials[ledger.get("b").number].value == 0.9
    assert states[orphan_number] == "FAIL"
    assert "RUNNING" not in states.values(), states
    children = runs.child_runs(study)
    names = [c.info.run_name for c in children]
    assert len(names) == len(set(names)) == 4, names


def test_reliability_a_trial_ended_after_the_snapshot_keeps_its_final_checkpoint(tmp_path):
    """The snapshot names the trial's first checkpoint, which Tune removed when the last
    one came (num_to_keep 1): Tune's re-run of the trial fails, and the study takes the
    final checkpoint from the trial's folder (seen in the S3 resume test, CI 2026-12-03)."""
    study = runs.open_study_runs(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="late",
        run_name="parent", tags={"themetune.role": "parent"})
    experiment = tmp_path / "experiment"
    trial_folder = experiment / "train_trial_b_2_training.learning_rate=0.01_2026-12-03"
    (trial_folder / "checkpoint_000001").mkdir(parents=True)
    (experiment / "train_trial_a_1_training.learning_rate=0.02_2026-12-03").mkdir()

    dead = Driver(study, None, tmp_path, experiment_path=str(experiment))
    late = dead.trial("b", checkpoint=str(trial_folder / "checkpoint_000001"))
    dead.start(late)
    dead.report(late, _epoch(1))
    snap = dead.snapshot()
    dead.report(late, _final(2, 0.8))
    dead.complete(late, _final(2, 0.8))

    live = Driver(study, None, tmp_path, experiment_path=str(experiment))
    live.restore(snap)
    record = live.callback.ledger.get("b")
    assert (record.state, record.value) == (COMPLETE, 0.8)
    assert record.checkpoint_path == str(trial_folder / "checkpoint_000001")
    rerun = live.trial("b", checkpoint=str(trial_folder / "checkpoint_000000"))
    live.start(rerun)
    live.callback.on_trial_error(iteration=0, trials=[], trial=rerun)
    assert live.callback.ledger.best() is record
    assert record.checkpoint_path == str(trial_folder / "checkpoint_000001")

    # Without the folder's checkpoint the study says so in one line, not a traceback.
    record.checkpoint_path = None
    plan = SimpleNamespace(config=SimpleNamespace(infra=SimpleNamespace(
        ray=SimpleNamespace(storage_path=str(tmp_path)))))
    with pytest.raises(StudyFailedError, match="trial .*checkpoint is not on the storage"):
        ModelLogger(plan=plan, preprocess=None).package(record)
