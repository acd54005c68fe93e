"""launch.py as a user runs it: a real Django DB file, a real MLflow store, real Ray."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_site, tiny_config_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory, digits_folder):
    """A migrated SQLite DB holding one imported theme, and the env that points at it."""
    return make_site(tmp_path_factory.mktemp("site"), digits_folder, theme_name="tiny_digits")


def launch(site, *args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)],
                          env=site["env"], cwd=cwd or site["folder"], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_validates_and_starts_nothing(site, tmp_path):
    configs = tiny_config_files(tmp_path / "configs")
    result = launch(site, "--theme-id", site["theme_id"], "--configs", configs, "--dry-run",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training.learning_rate: float [0.001, 0.01] log" in result.stdout
    assert "4 classes" in result.stdout
    assert "nothing was started" in result.stdout
    assert not (site["folder"] / "mlflow.db").exists()
    assert not (tmp_path / "configs" / "ray_results").exists()


@pytest.mark.slow
def test_unknown_theme_exits_2_with_one_line(site, tmp_path):
    configs = tiny_config_files(tmp_path / "configs")
    result = launch(site, "--theme-id", 999, "--configs", configs, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Theme 999 not found" in lines[0]
    assert "db.sqlite3" in lines[0]           # names the database it looked in
    assert "Traceback" not in result.stderr
    assert not (site["folder"] / "mlflow.db").exists()


@pytest.mark.slow
def test_bad_yaml_exits_2_without_traceback(site, tmp_path):
    configs = tiny_config_files(tmp_path / "configs")
    (configs / "optuna_params.yaml").write_text("study:\n  direction: sideways\n")
    result = launch(site, "--theme-id", site["theme_id"], "--configs", configs, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ")
    assert "optuna_params.yaml: key 'study.direction'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_num_classes_that_disagrees_with_theme(site, tmp_path):
    configs = tiny_config_files(tmp_path / "configs", base={"model": {"num_classes": 10}})
    result = launch(site, "--theme-id", site["theme_id"], "--configs", configs, "--dry-run",
                    cwd=tmp_path)
    assert result.returncode == 2
    assert "model.num_classes is 10 but theme 'tiny_digits' has 4 classes" in result.stderr


@pytest.mark.ray
def test_launch_runs_a_study_and_records_it(site, tmp_path):
    configs = tiny_config_files(tmp_path / "configs", n_trials=2, epochs=1)
    result = launch(site, "--theme-id", site["theme_id"], "--configs", configs,
                    "--max-concurrent-trials", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for label in ("parent run:", "best trial:", "best value:", "best params:", "best run:",
                  "registered:      tiny_digits_model version 1"):
        assert label in out
    parent_id = out.split("parent run:")[1].split()[0]
    client = MlflowClient(site["env"]["MLFLOW_TRACKING_URI"])
    assert client.get_run(parent_id).info.status == "FINISHED"

    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    study = db.execute("select id, status, mlflow_parent_run_id, best_value from "
                       "data_access_tuningstudy").fetchall()
    assert len(study) == 1 and study[0][1] == "completed" and study[0][2] == parent_id
    trials = db.execute("select number, state, mlflow_run_id from data_access_tuningtrial "
                        "where study_id = ?", (study[0][0],)).fetchall()
    assert sorted(t[0] for t in trials) == [0, 1]
    assert {t[1] for t in trials} == {"COMPLETE"}
    assert all(t[2] for t in trials)


@pytest.mark.ray
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stop_signal_marks_runs_killed(site, tmp_path, signum):
    configs = tiny_config_files(tmp_path / "configs", n_trials=4, epochs=30)
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--theme-id",
                             str(site["theme_id"]), "--configs", str(configs)],
                            env=site["env"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    parent_id = None
    try:
        deadline = time.time() + 240
        for line in proc.stdout:
            if "parent run " in line and parent_id is None:
                parent_id = line.split("parent run ")[1].split()[0]
            if parent_id and "running" in line and " 0 running" not in line:
                break
            assert time.time() < deadline, "no trial started in time"
        time.sleep(3)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    client = MlflowClient(site["env"]["MLFLOW_TRACKING_URI"])
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert children, "a trial had started"
    assert all(c.info.status == "KILLED" for c in children)
    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    status = db.execute("select status from data_access_tuningstudy where "
                        "mlflow_parent_run_id = ?", (parent_id,)).fetchone()
    assert status == ("killed",)
