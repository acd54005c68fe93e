"""Whole studies on a real local Ray cluster with a real MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pyfunc
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend

from tests.conftest import tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.data.keys import theme_content_hash
from tuning.errors import StorageError
from tuning.study import prepare_study, run_study
from tuning.tracking.progress import ProgressDisplay
from tuning.tracking.recording import StudyEnd, StudyStart, TrialEnd, TrialResult, TrialStart

pytestmark = pytest.mark.ray


class ListRecorder:
    """A StudyRecorder that keeps every event, to check what the driver reports."""

    def __init__(self):
        self.events = []

    def study_started(self, event): self.events.append(event)
    def trial_started(self, event): self.events.append(event)
    def trial_result(self, event): self.events.append(event)
    def trial_finished(self, event): self.events.append(event)
    def study_finished(self, event): self.events.append(event)
    def study_evaluated(self, event): self.events.append(event)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def run(folder: Path, theme, *, recorder=None, **kwargs):
    config = load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=theme.id))
    plan = prepare_study(config, theme, **kwargs)
    return run_study(plan, recorder=recorder, progress=ProgressDisplay(min_interval_s=0))


def child_runs(client: MlflowClient, outcome):
    return client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")


def test_study_structure_in_mlflow(ray_local, mlflow_uri, tmp_path, digits_theme, capsys):
    # On the streaming data path (shards decoded by Ray tasks); the other studies here
    # run resident, the default for a theme this small.
    folder = tiny_config_files(tmp_path / "configs", n_trials=3, epochs=2, params={
        "training": {"run_name": "tiny_run"},
        "data": {"image_size": 16, "channels": 1, "mode": "streaming"}})
    recorder = ListRecorder()
    # No --storage: every study gets a journal file of its own, read back below as
    # optuna-dashboard does (an explicit storage: test_persistent_storage_...).
    config = load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=digits_theme.id))
    plan = prepare_study(config, digits_theme, study_name="structure")
    outcome = run_study(plan, recorder=recorder, progress=ProgressDisplay(min_interval_s=0))
    assert plan.storage_url.startswith(
        f"journal:{tmp_path / 'configs/ray_results/themetune_optuna'}/structure-")
    storage = optuna.storages.JournalStorage(
        JournalFileBackend(plan.storage_url.removeprefix("journal:")))
    client = MlflowClient(mlflow_uri)

    # Experiment = theme name; parent run named by params.yaml's run_name.
    experiment = client.get_experiment(outcome.experiment_id)
    assert experiment.name == digits_theme.name
    # MLflow 3's UI opens it on its model-training view, not the GenAI overview.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.run_name == "tiny_run"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["direction"] == "maximize"
    assert parent.data.params["n_trials"] == "3"
    assert parent.data.params["data_mode"] == "streaming"
    assert len(list((tmp_path / "configs/ray_results/themetune_cache").glob(
        "*.shards/images-*.npy"))) == 1
    assert "space.training.learning_rate" in parent.data.params

    # One child per trial, named trial_{optuna number}, tagged with parent and Ray ids.
    children = child_runs(client, outcome)
    assert sorted(c.info.run_name for c in children) == ["trial_0", "trial_1", "trial_2"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert child.data.tags["ray.trial_id"]
        assert len(child.data.tags["ray.node_id"]) >= 16
        assert set(child.data.params) == {"training.learning_rate", "training.optimizer"}
        for name in ("train_loss", "valid_loss", "valid_acc"):
            history = client.get_metric_history(child.info.run_id, name)
            assert [m.step for m in history] == [1, 2]
        assert {"test_acc", "test_loss"} <= set(child.data.metrics)

    # Optuna tells the same story (what optuna-dashboard shows): each epoch's valid_acc,
    # and each trial's ids linking it to its child run and its Ray trial.
    by_number = {c.data.tags["optuna.trial_number"]: c for c in children}
    trials = optuna.load_study(study_name="structure", storage=storage).trials
    assert len(trials) == 3
    for trial in trials:
        child = by_number[str(trial.number)]
        history = client.get_metric_history(child.info.run_id, "valid_acc")
        assert trial.intermediate_values == pytest.approx({m.step: m.value for m in history})
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.user_attrs["mlflow.run_id"] == child.info.run_id
        assert trial.user_attrs["ray.trial_id"] == child.data.tags["ray.trial_id"]
    # optuna-dashboard names the objective and says where the study's runs are.
    study = optuna.load_study(study_name="structure", storage=storage)
    assert study.metric_names == ["test_acc"]
    assert study.user_attrs["theme_name"] == digits_theme.name
    assert study.user_attrs["mlflow.parent_run_id"] == outcome.parent_run_id
    assert study.user_attrs["intermediate_values"].startswith("valid_acc after each epoch")
    assert f"#/experiments/{outcome.experiment_id}/runs/{outcome.parent_run_id}" in \
        study.user_attrs["mlflow.link"]

    # best_value is the best child's metric, and the registered version is its model.
    # Ties go to the earliest trial, so the best is looked up, then checked to be a maximum.
    best_child = next(c for c in children if c.info.run_id == outcome.best_run_id)
    assert best_child.data.metrics["test_acc"] == max(c.data.metrics["test_acc"]
                                                      for c in children)
    assert parent.data.metrics["best_value"] == pytest.approx(best_child.data.metrics["test_acc"])
    assert best_child.info.run_name == f"trial_{outcome.best_number}"
    assert parent.data.params["best.training.optimizer"] == best_child.data.params[
        "training.optimizer"]
    version = client.get_model_version(f"{digits_theme.name}_model", outcome.model_version)
    assert version.run_id == best_child.info.run_id
    assert version.tags["parent_run_id"] == outcome.parent_run_id
    assert len(client.search_model_versions(f"name='{digits_theme.name}_model'")) == 1

    # The registered model is a pyfunc whose bare network takes an input of the trained size.
    model = mlflow.pyfunc.load_model(f"models:/{digits_theme.name}_model/{outcome.model_version}")
    with torch.no_grad():
        logits = model.unwrap_python_model().network(torch.zeros(2, 1, 16, 16))
    assert logits.shape == (2, digits_theme.num_classes)

    # Parent artifacts: configs as given and resolved, best params, a copy of the best model.
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"configs", "best_params.yaml"} <= artifacts
    configs = {a.path for a in client.list_artifacts(outcome.parent_run_id, "configs")}
    assert {"configs/optuna_params.yaml", "configs/params.yaml", "configs/config.yaml",
            "configs/augments.yaml", "configs/resolved.yaml"} <= configs
    parent_model = mlflow.pyfunc.load_model(
        [m for m in mlflow.search_logged_models(experiment_ids=[outcome.experiment_id],
                                                output_format="list")
         if m.source_run_id == outcome.parent_run_id][0].model_uri)
    assert isinstance(parent_model.unwrap_python_model().network, torch.nn.Module)

    _assert_model_centric(client, outcome, children, digits_theme)

    # The recorder heard the same story, in order.
    assert isinstance(recorder.events[0], StudyStart)
    assert isinstance(recorder.events[-1], StudyEnd)
    assert recorder.events[-1].best_trial_number == outcome.best_number
    assert sorted(e.number for e in recorder.of(TrialStart)) == [0, 1, 2]
    assert len(recorder.of(TrialResult)) == 6
    assert {e.state for e in recorder.of(TrialEnd)} == {"COMPLETE"}

    # Selected on test_acc, as the original tool's configs did: said once, and tagged.
    assert parent.data.tags["themetune.selection_split"] == "test"
    captured = capsys.readouterr()
    assert captured.err.count("chooses the best trial on the test split") == 1
    out = captured.out
    assert "[themetune] trials 3/3 done" in out
    assert "data path: streaming (data.mode: streaming" in out
    assert "with Ray tasks on 1 node" in out
    # Clean logs: no MLflow artifact download bars, no hint about TensorBoard files
    # that the study does not write.
    assert "Downloading artifacts" not in out + captured.err
    assert "tensorboard" not in (out + captured.err).lower()


def _assert_model_centric(client, outcome, children, theme):
    """MLflow 3's Models tab and Datasets column, as test_study_structure's study left them."""
    models = client.search_logged_models(experiment_ids=[outcome.experiment_id])
    by_name = {m.name: m for m in models}
    assert sorted(by_name) == ["best_model", "trial_0", "trial_1", "trial_2"]
    for child in children:
        model = by_name[child.info.run_name]   # trial_<optuna number>
        assert model.source_run_id == child.info.run_id
        assert model.params["training.optimizer"] == child.data.params["training.optimizer"]
        assert model.params["architecture"] == "ResNet18"
        metrics = {m.key: m.value for m in model.metrics}
        assert metrics["test_acc"] == pytest.approx(child.data.metrics["test_acc"])
        assert metrics["valid_acc"] == pytest.approx(child.data.metrics["valid_acc"])
        assert model.tags["mlflow.note.content"].startswith("A trial's model: trial ")
        # Linked to the model, not logged twice to the run.
        assert [m.step for m in client.get_metric_history(child.info.run_id, "test_acc")] == [2]
    best = by_name["best_model"]
    assert best.source_run_id == outcome.parent_run_id
    assert {m.key: m.value for m in best.metrics}["test_acc"] == pytest.approx(
        outcome.best_value)
    assert best.params["trial_number"] == str(outcome.best_number)

    # The theme as three split datasets on every run, its content hash as the digest.
    digest = theme_content_hash(theme)[:32]
    for run_id in [outcome.parent_run_id, *(c.info.run_id for c in children)]:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                    for i in inputs}
        assert contexts == {f"{theme.name}-train": "training",
                            f"{theme.name}-valid": "validation",
                            f"{theme.name}-test": "test"}
        for item in inputs:
            assert item.dataset.digest == digest
            assert json.loads(item.dataset.source) == {"url": f"themetune://theme/{theme.id}"}
            assert json.loads(item.dataset.profile)["num_rows"] > 0
    # The Datasets filter finds the runs by name.
    found = client.search_runs([outcome.experiment_id],
                               filter_string=f"dataset.name = '{theme.name}-train'")
    assert len(found) == 1 + len(children)


def test_persistent_storage_continues_and_refuses_other_direction(ray_local, mlflow_uri,
                                                                  tmp_path, digits_theme):
    folder = tiny_config_files(tmp_path / "configs", n_trials=2, epochs=1)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = run(folder, digits_theme, storage_url=url, study_name="shared")
    second = run(folder, digits_theme, storage_url=url, study_name="shared")
    study = optuna.load_study(study_name="shared", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    client = MlflowClient(mlflow_uri)
    names = sorted(c.info.run_name for c in child_runs(client, second))
    assert names == ["trial_2", "trial_3"]  # Optuna's numbers continue across launches
    assert first.parent_run_id != second.parent_run_id

    other = tiny_config_files(tmp_path / "other", n_trials=1, study={"direction": "minimize",
                                                                     "metric": "test_loss"})
    config = load_study_config(ConfigFiles.in_folder(other), Overrides(theme_id=1))
    with pytest.raises(StorageError, match="exists with direction maximize"):
        prepare_study(config, digits_theme, storage_url=url, study_name="shared")


def test_asha_stops_trials_and_they_end_pruned(ray_local, mlflow_uri, tmp_path, digits_theme,
                                               capsys):
    folder = tiny_config_files(
        tmp_path / "configs", n_trials=4, epochs=3, study={"metric": "valid_acc"},
        # One trial at a time: which trial ASHA stops must not depend on which of two
        # concurrent trials reports its first epoch first.
        infra={"ray": {"storage_path": str(tmp_path / "rr")}, "max_concurrent_trials": 1,
               "mlflow": {"log_models": "best"}, "cache_dir": str(tmp_path / "cache"),
               "scheduler": {"type": "asha", "metric": "valid_loss", "mode": "min",
                             "grace_period": 1, "reduction_factor": 4}},
        space={"training.learning_rate": {"type": "float", "low": 1e-5, "high": 0.05,
                                          "log": True}})
    recorder = ListRecorder()
    outcome = run(folder, digits_theme, recorder=recorder)
    client = MlflowClient(mlflow_uri)
    children = child_runs(client, outcome)
    states = {c.info.run_name: (c.info.status, c.data.tags["optuna.trial_state"])
              for c in children}
    assert len(states) == 4
    # Stopped trials are KILLED in MLflow and PRUNED in Optuna; never a half-trained value.
    for status, state in states.values():
        assert (status, state) in {("FINISHED", "COMPLETE"), ("KILLED", "PRUNED")}
    assert any(state == "PRUNED" for _, state in states.values())
    # Selected on validation: the test split stays held out, and nothing is said about it.
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["themetune.selection_split"] == "validation"
    assert "test split" not in capsys.readouterr().err
    for child in children:
        if child.data.tags["optuna.trial_state"] == "PRUNED":
            assert "test_acc" not in child.data.metrics
    # log_models: best -> only the best trial's child run holds a model.
    with_models = {m.source_run_id for m in mlflow.search_logged_models(
        experiment_ids=[outcome.experiment_id], output_format="list")}
    assert outcome.best_run_id in with_models
    assert with_models <= {outcome.best_run_id, outcome.parent_run_id}
