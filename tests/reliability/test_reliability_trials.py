"""Faults inside trials, caused for real: a diverging loss, a killed worker process."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.errors import ConfigError
from tuning.study import prepare_study, run_study
from tuning.tracking.progress import ProgressDisplay

pytestmark = pytest.mark.ray

DIVERGING_LR = 1e6


def _run(folder: Path, theme, trainable=None, **kwargs):
    config = load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=theme.id))
    plan = prepare_study(config, theme, **kwargs)
    return run_study(plan, progress=ProgressDisplay(min_interval_s=0), trainable=trainable)


def _waits_to_be_killed_after_its_first_epoch():
    """The real trial, whose first run, once its first epoch and checkpoint are reported,
    waits to be killed: the kill never races the remaining epochs. Its retry (a new
    worker, with the checkpoint) trains as usual."""

    def trial(config, *, data, settings):
        import time

        from ray import tune

        from tuning.trial import trainable

        if tune.get_checkpoint() is None:
            report = tune.report

            def report_then_wait(*args, **kwargs):
                report(*args, **kwargs)
                time.sleep(600)

            tune.report = report_then_wait
        return trainable.train_trial(config, data=data, settings=settings)

    return trial


def _children(client: MlflowClient, outcome):
    return client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")


def test_reliability_diverging_trial_fails_and_study_goes_on(ray_local, mlflow_uri, tmp_path,
                                                            digits_theme):
    # SGD at this learning rate overflows in the first epoch: the trainable raises
    # NonFiniteLossError. study.seed 0 makes TPE's first two picks [1e6, 0.001].
    folder = tiny_config_files(
        tmp_path / "configs", n_trials=2, epochs=2, study={"seed": 0},
        space={"training.learning_rate": {"type": "categorical",
                                          "choices": [0.001, DIVERGING_LR]}},
        base={"model": {"name": "ResNet18"},
              "training": {"num_epochs": 2, "batch_size": 16, "optimizer": "SGD"},
              "data": {"split_ratio": {"train": 0.6, "valid": 0.2, "test": 0.2}, "seed": 3}})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    outcome = _run(folder, digits_theme, storage_url=url, study_name="nan")
    client = MlflowClient(mlflow_uri)
    children = {c.data.tags["optuna.trial_number"]: c for c in _children(client, outcome)}
    study = optuna.load_study(study_name="nan", storage=url)
    assert len(children) == 2 and len(study.trials) == 2
    lrs = {t.params["training.learning_rate"] for t in study.trials}
    assert lrs == {0.001, DIVERGING_LR}, "the seed no longer picks both choices"
    for trial in study.trials:
        child = children[str(trial.number)]
        if trial.params["training.learning_rate"] == DIVERGING_LR:
            assert trial.state.name == "FAIL"
            assert child.info.status == "FAILED"
            assert child.data.tags["optuna.trial_state"] == "FAIL"
            reason = child.data.tags["themetune.end_reason"]
            assert "NonFiniteLossError" in reason and "learning_rate" in reason, reason
        else:
            assert trial.state.name == "COMPLETE"
            assert child.info.status == "FINISHED"
            assert outcome.best_number == trial.number
    assert outcome.status == "completed"
    assert outcome.counts["FAIL"] == 1 and outcome.counts["COMPLETE"] == 1


def test_reliability_killed_worker_retries_into_the_same_child_run(ray_local, mlflow_uri,
                                                                   tmp_path, digits_theme):
    epochs = 6
    folder = tiny_config_files(
        tmp_path / "configs", n_trials=1, epochs=epochs,
        infra={"ray": {"storage_path": str(tmp_path / "rr")}, "failure": {"max_failures": 1},
               "mlflow": {"log_models": "none"}, "cache_dir": str(tmp_path / "cache")})
    client = MlflowClient(mlflow_uri)
    killed: dict[str, int] = {}

    def kill_worker_after_first_epoch():
        # Find the trial's worker through its child run (tag ray.pid, set from the
        # trial's results), and SIGKILL it once an epoch (and its checkpoint) is in.
        deadline = time.time() + 400
        while time.time() < deadline and not killed:
            time.sleep(0.5)
            for experiment in client.search_experiments():
                for run in client.search_runs([experiment.experiment_id],
                                              filter_string="tags.`ray.pid` != ''"):
                    steps = client.get_metric_history(run.info.run_id, "valid_loss")
                    if steps and run.info.status == "RUNNING":
                        killed["pid"] = int(run.data.tags["ray.pid"])
                        killed["after_epoch"] = max(m.step for m in steps)
                        os.kill(killed["pid"], signal.SIGKILL)
                        return

    killer = threading.Thread(target=kill_worker_after_first_epoch, daemon=True)
    killer.start()
    outcome = _run(folder, digits_theme, trainable=_waits_to_be_killed_after_its_first_epoch())
    killer.join(timeout=5)
    assert killed, "the worker was never killed"
    assert killed["after_epoch"] == 1

    (child,) = _children(client, outcome)
    assert child.info.status == "FINISHED"
    assert int(child.data.tags["ray.pid"]) != killed["pid"]   # the retry ran elsewhere
    assert child.data.tags["themetune.retries"] == "1"
    assert "themetune.retry_reason_1" in child.data.tags
    # From the checkpoint the kill left, not from scratch.
    assert killed["after_epoch"] <= int(child.data.tags["themetune.resumed_from_epoch"]) < epochs
    for name in ("train_loss", "valid_loss", "valid_acc"):
        steps = [m.step for m in client.get_metric_history(child.info.run_id, name)]
        assert steps == list(range(1, epochs + 1)), (name, steps)
    assert outcome.counts["COMPLETE"] == 1


def test_reliability_out_of_memory_trial_fails_and_study_goes_on(ray_local, mlflow_uri, tmp_path,
                                                                digits_theme):
    # resources.memory_gb caps what a trial's worker may add to its memory: at 160 px a
    # batch of 48 needs several times what a batch of 4 does, and more than the cap,
    # so that trial's allocation fails for real inside torch. study.seed 0 makes the
    # first two picks the two choices.
    folder = tiny_config_files(
        tmp_path / "configs", n_trials=2, epochs=1, study={"seed": 0},
        space={"training.batch_size": {"type": "categorical", "choices": [4, 48]}},
        params={"training": {"run_name": "oom"}, "data": {"image_size": 160, "channels": 1}},
        infra={"ray": {"storage_path": str(tmp_path / "rr")},
               "resources": {"cpu": 1, "gpu": 0, "memory_gb": 0.5},
               "mlflow": {"log_models": "none"}, "cache_dir": str(tmp_path / "cache")})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    outcome = _run(folder, digits_theme, storage_url=url, study_name="oom")
    client = MlflowClient(mlflow_uri)
    children = {c.data.tags["optuna.trial_number"]: c for c in _children(client, outcome)}
    study = optuna.load_study(study_name="oom", storage=url)
    assert {t.params["training.batch_size"] for t in study.trials} == {4, 48}, \
        "the seed no longer picks both choices"
    for trial in study.trials:
        child = children[str(trial.number)]
        if trial.params["training.batch_size"] == 48:
            assert trial.state.name == "FAIL"
            assert child.info.status == "FAILED"
            reason = child.data.tags["themetune.end_reason"]
            assert reason.startswith("TrialOutOfMemoryError: out of memory ("), reason
            assert "training.batch_size" in reason and "resources.memory_gb (now 0.5)" in reason
        else:
            assert trial.state.name == "COMPLETE", child.data.tags
            assert child.info.status == "FINISHED"
    assert outcome.status == "completed"
    assert outcome.counts["FAIL"] == 1 and outcome.counts["COMPLETE"] == 1


def test_reliability_memory_no_node_offers_is_refused_before_anything_starts(
        ray_local, mlflow_uri, tmp_path, digits_theme):
    folder = tiny_config_files(
        tmp_path / "configs", n_trials=1,
        infra={"ray": {"storage_path": str(tmp_path / "rr")},
               "resources": {"cpu": 1, "gpu": 0, "memory_gb": 100000},
               "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(ConfigError) as err:
        _run(folder, digits_theme)
    message = str(err.value)
    assert "config.yaml: key 'resources.memory_gb'" in message, message
    assert "100000 GiB" in message and "Fix: use resources.memory_gb <=" in message
    assert MlflowClient(mlflow_uri).search_experiments() == [] or all(
        not MlflowClient(mlflow_uri).search_runs([e.experiment_id])
        for e in MlflowClient(mlflow_uri).search_experiments())
