"""The driver dies (SIGKILL to launch.py mid-study): `launch.py --resume` continues it."""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tests.reliability.reliability_helpers import Driver, run_launch, trials_done
from tuning.recovery.resume import RESUME_FILE

pytestmark = pytest.mark.ray


def _children(client: MlflowClient, parent_id: str):
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_reliability_stopped_then_killed_driver_resumes_to_the_end(site, tmp_path):
    """Ctrl-C (graceful stop), resume, SIGKILL of the resumed driver (a crash), resume
    again: the study ends as if nothing happened."""
    n_trials = 6
    configs = tiny_config_files(tmp_path / "configs", n_trials=n_trials, epochs=3,
                                light_checkpoints=True)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    client = MlflowClient(site["env"]["MLFLOW_TRACKING_URI"])

    # 1. Ctrl-C once a trial has finished: trials and parent KILLED, exit 130, and the
    #    command to continue is printed.
    first = Driver(site["env"], tmp_path, "--theme-id", site["theme_id"], "--configs",
                   configs, "--storage", storage, "--study-name", "crashy")
    try:
        started = first.wait_for(lambda line: "continue with: " in line, timeout=300)
        line = first.wait_for(lambda line: (trials_done(line) or 0) >= 1, timeout=400)
        done_before = trials_done(line)
        first.proc.send_signal(signal.SIGINT)
        first.wait(timeout=180)
    finally:
        first.close()
    output = first.output
    assert first.proc.returncode == 130, output[-3000:]
    resume_cmd = started.split("continue with: ")[1].strip()
    assert f"continue it with: {resume_cmd}" in output
    experiment = Path(resume_cmd.split("--resume ")[1])
    assert experiment.parent == tmp_path / "configs" / "ray_results"
    parent_id = json.loads((experiment / RESUME_FILE).read_text())["parent_run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"

    # 2. Resume, then kill the resumed driver outright once it has made progress.
    second = Driver(site["env"], tmp_path, *shlex.split(resume_cmd)[2:])
    try:
        second.wait_for(lambda line: done_before < (trials_done(line) or 0) < n_trials,
                        timeout=400)
        second.kill()
    finally:
        second.close()
    assert client.get_run(parent_id).info.status == "RUNNING"  # nobody closed it: a crash
    study = optuna.load_study(study_name="crashy", storage=storage)
    assert any(t.state.name == "RUNNING" for t in study.trials)

    # 3. The printed command again, from another folder: the study completes.
    result = run_launch(site["env"], site["folder"], *shlex.split(resume_cmd)[2:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"parent run:      {parent_id}" in result.stdout

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["themetune.resumes"] == "2"
    parents = client.search_runs([parent.info.experiment_id],
                                 filter_string="tags.`themetune.study_name` = 'crashy'")
    assert len(parents) == 1
    children = _children(client, parent_id)
    names = [c.info.run_name for c in children]
    assert len(children) == n_trials, names
    assert len(set(names)) == n_trials
    numbers = sorted(int(c.data.tags["optuna.trial_number"]) for c in children)
    assert len(set(numbers)) == n_trials
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "valid_loss")]
        assert steps == [1, 2, 3], (child.info.run_name, steps)  # each epoch once
        assert "test_acc" in child.data.metrics
    version = client.get_model_version("crash_digits_model", parent.data.tags[
        "registered_model"].split("/")[1])
    assert version.tags["parent_run_id"] == parent_id

    # Optuna: nothing left RUNNING; each child run's number is a COMPLETE trial there.
    study = optuna.load_study(study_name="crashy", storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert "RUNNING" not in states.values(), states
    assert all(states[n] == "COMPLETE" for n in numbers), states
    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    rows = db.execute("select s.status, count(t.id) from data_access_tuningstudy s join "
                      "data_access_tuningtrial t on t.study_id = s.id where "
                      "s.mlflow_parent_run_id = ? and t.state = 'COMPLETE' group by s.id",
                      (parent_id,)).fetchall()
    assert rows == [("completed", n_trials)]

    # A finished study is not resumed twice.
    again = run_launch(site["env"], tmp_path, "--resume", experiment)
    assert again.returncode == 2
    assert "already finished" in again.stderr and "Traceback" not in again.stderr
