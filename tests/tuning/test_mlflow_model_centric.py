"""What MLflow 3's UI and optuna-dashboard are given to read, without running a study:
the experiment's kind, the theme's datasets, the default Optuna storage, the study's
names and links. A real study's logged models, datasets and Optuna study are checked in
tests/tuning/test_study.py::test_study_structure_in_mlflow."""

from __future__ import annotations

import dataclasses
import json

import optuna
import optuna.distributions as od
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.data.keys import theme_content_hash
from tuning.optuna_adapter import INTERMEDIATE_ATTR, JOURNAL_FOLDER, StudySearch, study_storage
from tuning.study import prepare_study
from tuning.tracking import datasets, runs


def _open(uri: str, name: str = "digits_slice") -> runs.MlflowStudy:
    return runs.open_study_runs(tracking_uri=uri, experiment_name=name, run_name="r", tags={})


def _dry_plan(tmp_path, theme):
    folder = tiny_config_files(tmp_path / "configs")
    config = load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=theme.id))
    return prepare_study(config, theme, dry_run=True)


def test_the_experiment_opens_on_mlflows_training_view(mlflow_uri):
    study = _open(mlflow_uri)
    client = MlflowClient(mlflow_uri)
    # The UI's CUSTOM_MODEL_DEVELOPMENT kind (mlflow/server/js), not the GenAI overview.
    kind = client.get_experiment(study.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    # A kind someone chose in the UI is theirs: the next study leaves it.
    client.set_experiment_tag(study.experiment_id, "mlflow.experimentKind", "genai_development")
    _open(mlflow_uri)
    assert client.get_experiment(study.experiment_id).tags["mlflow.experimentKind"] == \
        "genai_development"


def test_a_study_without_storage_gets_a_journal_of_its_own_and_a_dry_run_makes_none(
        tmp_path, digits_theme, mlflow_uri):
    plan = _dry_plan(tmp_path, digits_theme)
    folder = tmp_path / "configs/ray_results" / JOURNAL_FOLDER
    assert plan.storage_url.startswith(f"journal:{folder}/tiny-")
    assert plan.storage is None and not folder.exists()

    url, storage = study_storage(None, storage_path=str(tmp_path / "configs/ray_results"),
                                 study_name="tiny", create=True)
    assert isinstance(storage, optuna.storages.JournalStorage) and folder.is_dir()
    assert url.startswith(f"journal:{folder}/tiny-") and url.endswith(".journal")
    # Where no journal file can live, and where --storage says, it is as before.
    assert study_storage(None, storage_path="s3://bucket/results", study_name="tiny",
                         create=True) == (None, None)
    given = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert study_storage(given, storage_path=str(tmp_path), study_name="tiny",
                         create=False) == (given, None)


def test_the_theme_is_three_split_datasets_told_apart_by_content(tmp_path, digits_theme,
                                                                  mlflow_uri):
    plan = _dry_plan(tmp_path, digits_theme)
    inputs = datasets.study_datasets(plan.theme, plan.theme_hash, plan.data)
    sizes = {i.dataset.name: json.loads(i.dataset.profile)["num_rows"] for i in inputs}
    assert sizes == {f"{digits_theme.name}-train": len(plan.data.train.labels),
                     f"{digits_theme.name}-valid": len(plan.data.valid.labels),
                     f"{digits_theme.name}-test": len(plan.data.test.labels)}
    assert {c["name"] for c in json.loads(inputs[0].dataset.schema)["mlflow_colspec"]} == \
        {"path", "label", "split"}

    # The same files with one image relabelled: another content, another digest.
    first = plan.theme.samples[0]
    changed = dataclasses.replace(plan.theme, samples=(
        dataclasses.replace(first, label=(first.label + 1) % plan.theme.num_classes),
        *plan.theme.samples[1:]))
    assert theme_content_hash(changed) != plan.theme_hash
    before, after = _open(mlflow_uri), _open(mlflow_uri)
    runs.use_datasets(before, inputs)
    runs.use_datasets(after, datasets.study_datasets(changed, theme_content_hash(changed),
                                                     plan.data))
    child = runs.create_child_run(after, name="trial_0", tags={})   # a child gets them too
    found = MlflowClient(mlflow_uri).search_runs(
        [before.experiment_id],
        filter_string=f"dataset.digest = '{theme_content_hash(changed)[:32]}'")
    assert {r.info.run_id for r in found} == {after.parent_run_id, child}


def test_optuna_dashboard_names_the_metric_and_links_the_runs():
    search = StudySearch(space={"x": od.FloatDistribution(0, 1)}, metric="valid_acc",
                         mode="max", sampler=optuna.samplers.TPESampler(seed=1))
    search.describe_study({"theme_id": 3, "theme_name": "digits",
                           "mlflow.parent_run_id": "abc", "mlflow.link": "http://m/#/x"})
    study = search.study
    assert study.metric_names == ["valid_acc"]
    assert study.user_attrs == {INTERMEDIATE_ATTR: "valid_acc after each epoch (step = epoch)",
                                "theme_id": 3, "theme_name": "digits",
                                "mlflow.parent_run_id": "abc", "mlflow.link": "http://m/#/x"}


@pytest.mark.parametrize("uri, link", [
    ("http://mlflow:5000/", "http://mlflow:5000/#/experiments/1/runs/p"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db #/experiments/1/runs/p")])
def test_the_mlflow_link_of_a_study(uri, link, monkeypatch):
    import mlflow

    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: uri)
    links = runs.study_links(runs.MlflowStudy(client=None, experiment_id="1",
                                              parent_run_id="p"))
    assert links["mlflow.link"] == link and links["mlflow.parent_run_id"] == "p"


def test_a_models_metrics_are_its_runs_last_points_linked_not_logged_again(mlflow_uri):
    study = _open(mlflow_uri)
    client = MlflowClient(mlflow_uri)
    run_id = runs.create_child_run(study, name="trial_0", tags={})
    result = {"epoch": 2, "valid_acc": 0.5, "test_acc": 0.75, "timestamp": 1_700_000_000}
    metrics, step, timestamp_ms = runs.result_metrics(result)   # as the callback logs it
    runs.log_metrics(client, run_id, metrics, step=step, timestamp_ms=timestamp_ms)
    trial = client.create_logged_model(study.experiment_id, name="trial_0",
                                       source_run_id=run_id)
    runs.link_model_metrics(client, run_id, trial.model_id, result)
    # After --resume the ledger's result has no time: the run's own points are linked.
    best = client.create_logged_model(study.experiment_id, name="best_model",
                                      source_run_id=study.parent_run_id)
    runs.link_model_metrics(client, run_id, best.model_id,
                            {k: v for k, v in result.items() if k != "timestamp"})
    for model in (trial, best):
        linked = client.get_logged_model(model.model_id).metrics
        assert {m.key: m.value for m in linked} == {"valid_acc": 0.5, "test_acc": 0.75}
        assert {m.step for m in linked} == {2}
    for key in ("valid_acc", "test_acc"):
        assert len(client.get_metric_history(run_id, key)) == 1
