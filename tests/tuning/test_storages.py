"""Persistent Optuna storages (`--storage`): a study on a real PostgreSQL server, and a
stored study asked to continue with another search space, refused on each kind of
storage before anything starts. (A study on SQLite, and another direction refused:
tests/tuning/test_study.py; two launches sharing a journal file at the same time:
tests/test_launch_promises.py.)"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tests.reliability.reliability_helpers import free_port
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.config.search_space import to_distributions
from tuning.errors import StorageError
from tuning.optuna_adapter import open_storage
from tuning.study import prepare_study, run_study
from tuning.tracking.progress import ProgressDisplay

SPACE = {"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
         "training.optimizer": {"type": "categorical", "choices": ["Adam", "AdamW"]}}
OTHER_SPACE = {**SPACE, "training.learning_rate": {"type": "float", "low": 0.001,
                                                   "high": 0.1, "log": True}}


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server (tests/reliability/postgres_server.py) with a database
    for Optuna; skipped only where PostgreSQL is not installed (`make test` installs it)."""
    from tests.reliability.postgres_server import PostgresServer, _bin

    try:
        _bin("initdb")
    except RuntimeError as missing:
        pytest.skip(str(missing))
    server = PostgresServer(free_port(), database="optuna")
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.remove()


def config_in(folder: Path, theme, *, space=SPACE, **kwargs):
    configs = tiny_config_files(folder, space=space, **kwargs)
    return load_study_config(ConfigFiles.in_folder(configs), Overrides(theme_id=theme.id))


@pytest.mark.ray
def test_postgresql_storage_holds_the_study(ray_local, mlflow_uri, tmp_path, digits_theme,
                                           postgres):
    config = config_in(tmp_path / "configs", digits_theme, n_trials=2, infra={
        "mlflow": {"log_models": "none"}, "ray": {"storage_path": str(tmp_path / "rr")},
        "max_concurrent_trials": 2, "cache_dir": str(tmp_path / "cache")})
    plan = prepare_study(config, digits_theme, storage_url=postgres.url, study_name="pg")
    outcome = run_study(plan, progress=ProgressDisplay(min_interval_s=0))

    study = optuna.load_study(study_name="pg", storage=postgres.url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient(mlflow_uri)
    runs = {r.info.run_id: r for r in client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")}
    for trial in study.trials:
        child = runs[trial.user_attrs["mlflow.run_id"]]
        assert child.info.run_name == f"trial_{trial.number}"
        assert trial.value == pytest.approx(child.data.metrics["test_acc"])
        assert trial.user_attrs["themetune.parent_run_id"] == outcome.parent_run_id
    assert client.get_run(outcome.parent_run_id).data.params["storage"] == postgres.url
    # A second launch with the same name continues it.
    again = prepare_study(config, digits_theme, storage_url=postgres.url, study_name="pg")
    assert again.stored_trials == 2


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    if request.param == "journal":
        return f"journal:{tmp_path / 'study.log'}"
    server = request.getfixturevalue("postgres")
    return server.url


def test_stored_study_with_another_search_space_is_refused(storage_url, mlflow_uri, tmp_path,
                                                           digits_theme, request):
    name = f"space-{request.node.callspec.id}"
    stored = config_in(tmp_path / "stored", digits_theme)
    # A study stored as a launch stores it: a trial asked with the space's distributions.
    study = optuna.create_study(study_name=name, storage=open_storage(storage_url),
                                direction="maximize")
    study.tell(study.ask(to_distributions(stored.space)), 0.5)

    other = config_in(tmp_path / "other", digits_theme, space=OTHER_SPACE)
    with pytest.raises(StorageError) as refused:
        prepare_study(other, digits_theme, storage_url=storage_url, study_name=name)
    message = refused.value.one_line()
    assert "another search space" in message and name in message
    assert "params_to_tune" in message and "--study-name" in message
    # The same space continues the stored study: the refusal is about the space.
    assert prepare_study(stored, digits_theme, storage_url=storage_url,
                         study_name=name).stored_trials == 1
    # Nothing was started for the refused one: the study still holds its one trial.
    assert len(optuna.load_study(study_name=name, storage=open_storage(storage_url)).trials) == 1
