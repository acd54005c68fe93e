"""The driver's per-trial costs cut for bench.overhead (issue 13): Tune's per-result
log files off (params.json, which a resume reads, kept), ledger snapshots of decided
trials built once."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.study import prepare_study, run_study
from tuning.tracking import ledger as ledger_module
from tuning.tracking.checkpoint_pruning import CheckpointPruner
from tuning.tracking.ledger import COMPLETE, PRUNED, RUNNING, StudyLedger, TrialRecord
from tuning.tracking.models_io import ModelLogger
from tuning.tracking.progress import ProgressDisplay


def _run(folder: Path, theme):
    config = load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=theme.id))
    return run_study(prepare_study(config, theme), progress=ProgressDisplay(min_interval_s=0))


def _children(client: MlflowClient, outcome):
    return client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")


@pytest.mark.ray
def test_tune_writes_no_per_result_files_and_every_model_is_logged(
        ray_local, mlflow_uri, tmp_path, digits_theme):
    folder = tiny_config_files(tmp_path / "configs", n_trials=3, epochs=2)
    outcome = _run(folder, digits_theme)

    assert outcome.counts[COMPLETE] == 3
    client = MlflowClient(mlflow_uri)
    children = _children(client, outcome)
    assert len(children) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "trial_config.yaml" in artifacts

    # Tune's per-result files are off; params.json (read by a resume) is on the storage.
    trial_folders = [p for p in (folder / "ray_results").glob("*/*") if p.is_dir()
                     and (p / "params.json").exists()]
    assert len(trial_folders) == 3
    for trial_folder in trial_folders:
        assert not (trial_folder / "result.json").exists()
        assert not (trial_folder / "progress.csv").exists()
        assert not list(trial_folder.glob("events.out.tfevents*"))

    # Every trial's model is in MLflow, so only the best trial's checkpoint stays.
    models = client.search_logged_models(experiment_ids=[outcome.experiment_id])
    assert {m.name for m in models} >= {f"trial_{n}" for n in range(3)}
    best_trial_id = client.get_run(outcome.best_run_id).data.tags["ray.trial_id"]
    kept = {p.parent.name for p in (folder / "ray_results").glob("*/*/checkpoint_*")}
    assert len(kept) == 1 and best_trial_id in kept.pop()


@pytest.mark.ray
def test_failed_model_log_still_fails_the_study(ray_local, mlflow_uri, tmp_path, digits_theme,
                                                 monkeypatch):
    def log_trial_model(self, record):
        raise RuntimeError("artifact store full")

    monkeypatch.setattr(ModelLogger, "log_trial_model", log_trial_model)
    folder = tiny_config_files(tmp_path / "configs", n_trials=2, epochs=1)
    with pytest.raises(Exception, match="artifact store full"):
        _run(folder, digits_theme)
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert children
    # No trial run claims a model it does not hold.
    assert all(r.info.status != "FINISHED" for r in children)


def _record(tmp_path: Path, trial_id: str, value: float, *, state=COMPLETE,
            logged: bool = True) -> TrialRecord:
    checkpoint = tmp_path / trial_id / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint.pt").write_bytes(b"w" * 1000)
    return TrialRecord(ray_trial_id=trial_id, number=int(trial_id[-1]), params={},
                       state=state, value=value, checkpoint_path=str(checkpoint),
                       model_uri="models:/m-1" if logged else None)


def test_at_the_end_only_the_best_and_unlogged_checkpoints_stay(tmp_path, capsys):
    ledger = StudyLedger(metric="valid_acc", direction="maximize", n_trials=5)
    logged = _record(tmp_path, "t0", 0.5)
    best = _record(tmp_path, "t1", 0.9)
    unlogged = _record(tmp_path, "t2", 0.1, logged=False)   # log_models best|none
    stopped = _record(tmp_path, "t3", 0.2, state=PRUNED)
    gone = _record(tmp_path, "t4", 0.3)
    Path(gone.checkpoint_path, "checkpoint.pt").unlink()
    Path(gone.checkpoint_path).rmdir()   # removed by hand: it frees nothing, fails nothing
    for record in (logged, best, unlogged, stopped, gone):
        ledger.add(record)
    pruner = CheckpointPruner(ledger, str(tmp_path))
    pruner.at_end()
    assert not Path(logged.checkpoint_path).exists() and logged.checkpoint_removed
    for kept in (best, unlogged, stopped):
        assert Path(kept.checkpoint_path).exists() and not kept.checkpoint_removed
    assert pruner.removed == 2 and pruner.freed_bytes == 1000
    assert "removed 2 finished trials' checkpoints" in capsys.readouterr().out
    # A resumed study's ledger knows what went: nothing is removed twice.
    restored = StudyLedger(metric="valid_acc", direction="maximize", n_trials=5)
    restored.load_state(ledger.to_state())
    assert restored.get("t0").checkpoint_removed


def test_ledger_snapshot_builds_a_decided_trial_once(monkeypatch):
    built = []
    original = ledger_module._record_state
    monkeypatch.setattr(ledger_module, "_record_state",
                        lambda record: built.append(record.number) or original(record))
    ledger = StudyLedger(metric="test_acc", direction="maximize", n_trials=3)
    done = TrialRecord(ray_trial_id="a", number=0, params={"x": 1}, state=COMPLETE, value=0.5,
                       last_result={"test_acc": 0.5, "config": {"big": "x" * 1000}})
    running = TrialRecord(ray_trial_id="b", number=1, params={"x": 2})
    ledger.add(done)
    ledger.add(running)
    for _ in range(3):
        state = ledger.to_state()
    assert built.count(0) == 1 and built.count(1) == 3
    assert state["trials"][0]["last_result"] == {"test_acc": 0.5}
    # A model logged after the trial was decided still reaches the next snapshot.
    done.model_uri = "models:/m-1"
    assert ledger.to_state()["trials"][0]["model_uri"] == "models:/m-1"
    restored = StudyLedger(metric="test_acc", direction="maximize", n_trials=3)
    restored.load_state(pickle.loads(pickle.dumps(ledger.to_state())))
    assert restored.get("a").model_uri == "models:/m-1" and restored.get("b").state == RUNNING
