"""A study launched as a Ray job through the Job Submission SDK, on a real one-node
cluster that this test starts (`ray start --head --block`, stopped by its own process
group, so that no other Ray on the machine is touched).

Opt-in (about a minute more): THEMETUNE_TEST_RAY_JOBS=1. The default suite checks the
local launcher end to end in test_web_browser.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_access import selectors
from tests.web.conftest import launch_supports_record_id
from web import launch, study_configs

pytestmark = [pytest.mark.ray, pytest.mark.django_db(transaction=True),
              pytest.mark.skipif(os.environ.get("THEMETUNE_TEST_RAY_JOBS") != "1",
                                 reason="Ray job launches are opt-in: THEMETUNE_TEST_RAY_JOBS=1")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port, dashboard = free_port(), free_port()
    ray = Path(sys.executable).with_name("ray")
    # Its own ports and temp dir: another Ray on this machine is neither disturbed nor
    # joined (Ray's defaults, e.g. the agent's port 52365, would collide).
    temp_dir = Path(f"/tmp/tt-web-{os.getpid()}")   # short: Ray's socket paths have a limit
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        "ray-client-server-port")]
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         *ports],
        stdout=(tmp_path / "ray_head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
        # The job's `python` is the cluster's: here, this virtual environment's.
        env={**os.environ, "PATH": f"{ray.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 90
    from ray.job_submission import JobSubmissionClient

    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except (ConnectionError, RuntimeError):
            assert head.poll() is None, (tmp_path / "ray_head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_study_runs_as_a_ray_job(ray_head, settings, theme, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings.THEMETUNE_RAY_JOB_ADDRESS = ray_head
    if not launch_supports_record_id():
        settings.THEMETUNE_LAUNCH_SCRIPT = str(Path(__file__).with_name("launch_with_record.py"))
    preset = study_configs.presets(Path(settings.THEMETUNE_CONFIGS_DIR))[0]
    files = study_configs.build(study_configs.initial_values(preset, class_count=4),
                                theme_id=theme.id)
    study_id = launch.launch_new_study(theme_id=theme.id, files=files)
    study = selectors.study_get(study_id=study_id)
    assert study.launcher == "ray" and study.ray_job_id.startswith(f"themetune-study-{study_id}-")

    deadline = time.monotonic() + 240
    while study.is_active:
        assert time.monotonic() < deadline, launch.log_tail(study)[-3000:]
        time.sleep(2)
        study = launch.refresh_study(selectors.study_get(study_id=study_id))
    assert study.status == "completed", (study.error, launch.log_tail(study)[-3000:])
    assert len(selectors.trial_list(study_id=study_id)) == 2
    assert "registered:" in launch.log_tail(study)

    # A second, longer one, stopped with `ray job stop` once a trial runs: it ends killed.
    values = study_configs.initial_values(preset, class_count=4)
    values.update(n_trials="20", base_params=values["base_params"].replace(
        "num_epochs: 1", "num_epochs: 20"))
    second = launch.launch_new_study(theme_id=theme.id, files=study_configs.build(
        values, theme_id=theme.id))
    deadline = time.monotonic() + 180
    while not any(t.state == "RUNNING" for t in selectors.trial_list(study_id=second)):
        assert time.monotonic() < deadline, launch.log_tail(selectors.study_get(study_id=second))
        time.sleep(1)
    assert launch.cancel_study(study_id=second) is True
    deadline = time.monotonic() + 120
    study = selectors.study_get(study_id=second)
    while study.is_active:
        assert time.monotonic() < deadline, launch.log_tail(study)[-3000:]
        time.sleep(2)
        study = launch.refresh_study(selectors.study_get(study_id=second))
    assert study.status == "killed"
    assert "RUNNING" not in {t.state for t in selectors.trial_list(study_id=second)}
