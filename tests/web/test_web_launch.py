"""Launching in the background, following and cancelling, with stand-ins for launch.py
(the real one runs in test_web_browser.py): a process that fails the way launch.py fails
on a user error, one that runs until interrupted, and one that ignores SIGINT."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from data_access import selectors
from data_access.models import TuningStudy, TuningTrial
from web import launch, study_configs
from web.launch import local

pytestmark = pytest.mark.django_db(transaction=True)

USER_ERROR = """
import sys
print("preparing", flush=True)
print("error: optuna_params.yaml: key 'study.metric': bad metric. Fix: use test_acc.",
      file=sys.stderr, flush=True)
sys.exit(2)
"""
RUNS_UNTIL_INTERRUPTED = """
import sys, time
print("running", sys.argv[1:], flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""
IGNORES_SIGINT = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("stubborn", flush=True)
time.sleep(60)
"""


@pytest.fixture
def start(settings, tmp_path, theme):
    preset = study_configs.presets(Path(settings.THEMETUNE_CONFIGS_DIR))[0]
    values = study_configs.initial_values(preset, class_count=4)
    files = study_configs.build(values, theme_id=theme.id)
    started = []

    def start(script: str) -> int:
        path = tmp_path / f"fake_launch_{len(started)}.py"
        path.write_text(script)
        settings.THEMETUNE_LAUNCH_SCRIPT = str(path)
        study_id = launch.launch_new_study(theme_id=theme.id, files=files)
        started.append(study_id)
        return study_id

    yield start
    for study_id in started:   # nothing of ours outlives the test
        study = selectors.study_get(study_id=study_id)
        if study.process_id:
            local.kill_group(local.ProcessRef(study.process_id, study.process_start), 9)


def wait_until(study_id: int, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        study = launch.refresh_study(selectors.study_get(study_id=study_id))
        if predicate(study):
            return study
        assert time.monotonic() < deadline, f"study {study_id} stuck at {study.status}"
        time.sleep(0.2)


def test_a_user_error_before_the_start_fails_the_study_with_launch_pys_line(start):
    study_id = start(USER_ERROR)
    study = wait_until(study_id, lambda s: not s.is_active)
    assert study.status == "failed"
    assert study.error == ("optuna_params.yaml: key 'study.metric': bad metric. "
                           "Fix: use test_acc.")
    log = launch.log_tail(study)
    assert "--record-id" in log.splitlines()[0] and "preparing" in log


def test_the_process_is_detached_and_gets_the_study_arguments(start, theme):
    study_id = start(RUNS_UNTIL_INTERRUPTED)
    study = wait_until(study_id, lambda s: "running" in launch.log_tail(s))
    ppid = int(Path(f"/proc/{study.process_id}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid != __import__("os").getpid()   # adopted by init: never our zombie
    tail = launch.log_tail(study)
    assert f"'--theme-id', '{theme.id}', '--record-id', '{study_id}'" in tail
    assert study.status == "pending"


def test_cancel_interrupts_the_driver_and_the_study_ends_killed(start):
    study_id = start(RUNS_UNTIL_INTERRUPTED)
    wait_until(study_id, lambda s: "running" in launch.log_tail(s))
    # A trial that the driver could not close (it was killed) ends KILLED too.
    TuningTrial.objects.create(study_id=study_id, number=0, state="RUNNING")
    assert launch.cancel_study(study_id=study_id) is True
    study = wait_until(study_id, lambda s: not s.is_active)
    assert study.status == "killed"
    assert "interrupted" in launch.log_tail(study)
    assert TuningTrial.objects.get(study_id=study_id).state == "KILLED"
    assert launch.cancel_study(study_id=study_id) is False


def test_a_driver_that_ignores_sigint_is_terminated_after_the_grace_time(start, settings):
    settings.THEMETUNE_CANCEL_GRACE_S = 1
    study_id = start(IGNORES_SIGINT)
    wait_until(study_id, lambda s: "stubborn" in launch.log_tail(s))
    launch.cancel_study(study_id=study_id)
    time.sleep(0.5)
    assert selectors.study_get(study_id=study_id).status == "pending"
    study = wait_until(study_id, lambda s: not s.is_active, timeout=10)
    assert study.status == "killed"


def test_a_launch_that_cannot_start_fails_at_once(start, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise local.LocalStartError("no python here")
    monkeypatch.setattr(local, "start", broken)
    with pytest.raises(launch.LaunchError, match="could not start launch.py: no python here"):
        start(USER_ERROR)
    study = TuningStudy.objects.get()
    assert study.status == "failed" and "no python here" in study.error


def test_the_driver_gets_this_processs_database(settings):
    from django.db import connection

    url = launch.child_database_url()
    assert url == f"sqlite:///{connection.settings_dict['NAME']}"
    assert "test" in url   # the test database, a file the child can open


def test_a_study_started_from_the_command_line_is_not_cancelled_here(theme, make_study):
    study_id = make_study(theme, values=(0.5,), finish=False)
    with pytest.raises(launch.LaunchError, match="started from the command line"):
        launch.cancel_study(study_id=study_id)
    study = selectors.study_get(study_id=study_id)
    assert study.status == "running" and study.cancel_requested_at is None


def test_resume_refuses_what_cannot_be_resumed(theme, tmp_path):
    """Only a killed or failed study whose Tune experiment is there and unfinished has a
    resume; the rest are refused with the reason, and the row is left as it was.
    (A real resume, launched and run to the end, is in test_web_browser.py.)"""
    import json

    from tuning.recovery.resume import RESUME_FILE

    study = TuningStudy.objects.create(
        theme=theme, name="r", status="completed", direction="maximize", metric="test_acc",
        n_trials=1, optuna_study_name="r", launcher="local")
    experiment = tmp_path / "exp"
    cases = [("completed", "", "already completed"),
             ("running", "", "is still running"),
             ("killed", "", "never reached Ray Tune"),
             ("killed", str(tmp_path / "nowhere"), "holds no themetune_resume.json"),
             ("failed", str(experiment), "already finished")]
    experiment.mkdir()
    (experiment / RESUME_FILE).write_text(json.dumps({"finished": True}))
    for status, path, reason in cases:
        TuningStudy.objects.filter(pk=study.id).update(status=status, experiment_path=path)
        assert launch.resume_command(selectors.study_get(study_id=study.id)) is None
        with pytest.raises(launch.LaunchError, match=reason):
            launch.resume_study(study_id=study.id)
        assert TuningStudy.objects.get(pk=study.id).status == status
    (experiment / RESUME_FILE).write_text(json.dumps({"finished": False}))
    assert launch.resume_command(selectors.study_get(study_id=study.id)) == \
        f"python launch.py --resume {experiment} --record-id {study.id}"


PRINTS_COLOURS_AND_BARS = r"""
import os, sys
print("\x1b[36m(pid=1)\x1b[0m trial started", flush=True)
sys.stdout.write("Downloading artifacts:  50%|#####     |\rDownloading artifacts: 100%|##########|\n")
print("bars", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"), flush=True)
"""


def test_the_log_reads_as_plain_text_and_the_driver_draws_no_mlflow_bars(start, monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    study_id = start(PRINTS_COLOURS_AND_BARS)
    study = wait_until(study_id, lambda s: "bars " in launch.log_tail(s))
    tail = launch.log_tail(study)
    assert "\x1b" not in tail and "\r" not in tail
    assert "(pid=1) trial started" in tail
    assert "Downloading artifacts: 100%|##########|" in tail
    assert "50%" not in tail
    assert "bars false" in tail   # the driver's env (a Ray job's too: _driver_env)
