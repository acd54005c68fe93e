"""The MLflow tracking server goes away for a minute mid-study, then comes back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tests.reliability.reliability_helpers import free_port, run_launch
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.study import prepare_study, run_study
from tuning.tracking.progress import ProgressDisplay

pytestmark = pytest.mark.ray

OUTAGE_S = 60


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, SQLite behind it, serving artifacts."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        log = open(self.folder / "server.log", "a")
        # Its own session, so that stop() ends the server and its workers, nothing else.
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.exceptions.RequestException:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start:\n"
                             + (self.folder / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        """As if the machine went away: SIGKILL to the server's process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_reliability_mlflow_server_down_for_a_minute(ray_local, mlflow_server, tmp_path,
                                                    monkeypatch, digits_theme):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.chdir(tmp_path)
    epochs, n_trials = 4, 2
    folder = tiny_config_files(tmp_path / "configs", n_trials=n_trials, epochs=epochs,
                               light_checkpoints=True)
    client = MlflowClient(mlflow_server.uri)
    outage: dict[str, float] = {}

    def outage_after_first_epoch():
        deadline = time.time() + 400
        while time.time() < deadline:
            time.sleep(0.5)
            runs = [r for e in client.search_experiments()
                    for r in client.search_runs([e.experiment_id],
                                                filter_string="tags.`ray.pid` != ''")]
            if any(client.get_metric_history(r.info.run_id, "valid_loss") for r in runs):
                break
        mlflow_server.stop()
        outage["down"] = time.time()
        time.sleep(OUTAGE_S)
        mlflow_server.start()
        outage["up"] = time.time()

    thread = threading.Thread(target=outage_after_first_epoch, daemon=True)
    thread.start()
    config = load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=digits_theme.id))
    outcome = run_study(prepare_study(config, digits_theme),
                        progress=ProgressDisplay(min_interval_s=0))
    finished = time.time()
    thread.join(timeout=300)
    assert outage.get("up"), "the outage never happened"
    assert finished > outage["up"], "the study ended before the server came back"

    assert outcome.status == "completed" and outcome.counts["COMPLETE"] == n_trials
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    assert len(children) == n_trials
    for child in children:
        assert child.info.status == "FINISHED"
        for name in ("train_loss", "valid_loss", "valid_acc"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, name)]
            assert steps == list(range(1, epochs + 1)), (child.info.run_name, name, steps)
        assert {"test_acc", "test_loss"} <= set(child.data.metrics)
    assert client.get_model_version(f"{digits_theme.name}_model", outcome.model_version)


def test_reliability_mlflow_server_down_at_start_exits_2(site, tmp_path):
    configs = tiny_config_files(tmp_path / "configs")
    env = {**site["env"], "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    result = run_launch(env, tmp_path, "--theme-id", site["theme_id"], "--configs", configs)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "does not answer" in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]
    assert not (tmp_path / "configs" / "ray_results").exists()   # nothing was started


def test_reliability_mlflow_outage_longer_than_budget_exits_1_with_resume_command(
        site, ray_local_join, mlflow_server, tmp_path):
    """An outage longer than THEMETUNE_MLFLOW_OUTAGE_S stops the study: exit 1, one
    error line naming the budget, and the command that continues the study. (launch.py
    joins the session's Ray cluster through ray.address: no Ray start of its own.)"""
    from tests.reliability.reliability_helpers import Driver
    from tuning.recovery.resume import why_not_resumable

    budget_s = 5
    env = {**site["env"], **ray_local_join["env"], "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "THEMETUNE_MLFLOW_OUTAGE_S": str(budget_s)}
    # Long enough that the study is still running whenever the server goes away.
    configs = tiny_config_files(
        tmp_path / "configs", n_trials=20, epochs=20, light_checkpoints=True,
        infra={"mlflow": {"log_models": "none"},
               "ray": {"address": ray_local_join["address"],
                       "storage_path": str(tmp_path / "configs" / "ray_results")},
               "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 1,
               "cache_dir": str(tmp_path / "cache")})
    client = MlflowClient(mlflow_server.uri)
    driver = Driver(env, tmp_path, "--theme-id", site["theme_id"], "--configs", configs)
    try:
        started = driver.wait_for(lambda line: "continue with: " in line, timeout=400)
        # The outage starts once a trial's first epoch is in MLflow.
        deadline = time.time() + 400
        epoch_logged = False
        while time.time() < deadline and not epoch_logged:
            runs = [r for e in client.search_experiments()
                    for r in client.search_runs([e.experiment_id],
                                                filter_string="tags.`ray.pid` != ''")]
            epoch_logged = any(client.get_metric_history(r.info.run_id, "valid_loss")
                               for r in runs)
            if not epoch_logged:
                time.sleep(0.5)   # polling interval, not a synchronisation
        assert epoch_logged, "no epoch reached MLflow:\n" + "".join(driver.lines[-40:])
        mlflow_server.stop()
        down = time.time()
        code = driver.wait(timeout=400)
        ended = time.time()
    finally:
        driver.close()
    output = driver.output
    assert code == 1, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-4000:]
    assert "THEMETUNE_MLFLOW_OUTAGE_S" in errors[0] and f"more than {budget_s} s" in errors[0]
    resume_cmd = started.split("continue with: ")[1].strip()
    assert f"continue it with: {resume_cmd}" in output
    # It waited out the budget (the server's absence, not a first failed call, ended it),
    # and no more than a generous bound beyond it.
    assert budget_s <= ended - down < budget_s + 240, ended - down
    experiment = resume_cmd.split("--resume ")[1]
    assert why_not_resumable(experiment) is None   # the printed command can continue it
