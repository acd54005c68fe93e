"""The web UI's Ray-job launcher against a real one-node cluster that this file starts
(`ray start --head --block`: its own ports, temp dir and token auth; no other Ray on the
machine is touched or joined; at the end no process of it is left). In the default
suite: about a minute and a half on an idle 2-core machine.

Through web.launch, as the study pages' buttons call it: launch a study as a Ray job,
follow its progress in the DB record, cancel it (`ray job stop`), resume it (a second
Ray job) and see it complete in the same DB row and MLflow parent run. Every step waits
for an event (a DB row, a job status) with a generous timeout, never a fixed sleep.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from data_access import selectors
from web import launch, study_configs
from web.launch import ray_jobs

pytestmark = [pytest.mark.ray, pytest.mark.django_db(transaction=True)]

TIMEOUT = 300           # for every wait: generous, a loaded 2-core machine is slow
N_TRIALS = 3
# Enough epochs that the study is still running when it is cancelled after its first
# recorded epoch: 3 trials x EPOCHS epochs, 2 at a time.
EPOCHS = 8
# `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default, 3 s,
# is too short for the driver to close its runs). README: set it in the head's environment.
STOP_WAIT_S = "60"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_pids(marker: str) -> list[int]:
    """Processes started by this file's cluster: they inherit the head's marker variable
    (the job drivers too, which Ray starts in their own sessions)."""
    needle = f"THEMETUNE_WEB_RAY_TEST={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def wait_until(what: str, check, *, explain=lambda: "", timeout: float = TIMEOUT):
    """check()'s first truthy value, polled each second until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {timeout} s: {explain()}"
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """The dashboard address of a one-node cluster of 2 CPUs with token auth, for every
    test of this file; afterwards no process of it is left."""
    folder = tmp_path_factory.mktemp("ray-head")
    temp_dir = Path(f"/tmp/tt-web-{os.getpid()}")   # short: Ray's socket paths have a limit
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    ray = Path(sys.executable).with_name("ray")
    port, dashboard = free_port(), free_port()
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        "ray-client-server-port")]
    log = folder / "ray_head.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        head = subprocess.Popen(
            [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", "--disable-usage-stats",
             f"--temp-dir={temp_dir}", *ports],
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            # The job's `python` is the cluster's: here, this virtual environment's.
            env={**os.environ, "PATH": f"{ray.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                 "RAY_JOB_STOP_WAIT_TIME_S": STOP_WAIT_S,
                 "THEMETUNE_WEB_RAY_TEST": str(temp_dir)})
        address = f"http://127.0.0.1:{dashboard}"
        def reachable():
            assert head.poll() is None, log.read_text()[-3000:]
            try:
                return ray_jobs._client(address)
            except (ConnectionError, RuntimeError, ray_jobs.RayJobError):
                return None

        try:
            client = wait_until("Ray head", reachable, explain=lambda: log.read_text()[-3000:])
            yield address
            for job in client.list_jobs():   # a test that failed may leave one running
                if not job.status.is_terminal() and job.submission_id:
                    client.stop_job(job.submission_id)
        finally:
            # `ray start --block` stops its own processes on SIGTERM, in order (a
            # SIGTERM to its whole group at once can leave Ray's agents behind).
            head.terminate()
            try:
                head.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(timeout=60)
            # Whatever outlived it (a job driver runs in its own session): by id.
            deadline = time.monotonic() + 30
            while marked_pids(str(temp_dir)) and time.monotonic() < deadline:
                time.sleep(1)
            for pid in marked_pids(str(temp_dir)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 30
            while (left := marked_pids(str(temp_dir))) and time.monotonic() < deadline:
                time.sleep(1)
            shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes of the test cluster survived SIGKILL: {left}"


def study_files(settings, theme_id: int, *, n_trials: int, epochs: int):
    """The web form's files from the tiny preset (16 px gray ResNet18, 1 CPU a trial)."""
    preset = study_configs.presets(Path(settings.THEMETUNE_CONFIGS_DIR))[0]
    values = study_configs.initial_values(preset, class_count=4)
    assert values["num_epochs"] == "1"
    values.update(n_trials=str(n_trials), num_epochs=str(epochs))
    return study_configs.build(values, theme_id=theme_id)


def ended(study_id: int):
    """The study once it has ended (noting a job end its driver could not record, as
    the study pages do), else None."""
    study = launch.refresh_study(selectors.study_get(study_id=study_id))
    return None if study.is_active else study


def job_end(jobs, job_id: str):
    """The Ray job's status once it has ended (its driver has exited)."""
    return wait_until(f"end of job {job_id}", lambda: (
        (status := jobs.get_job_status(job_id)).is_terminal() and status),
        explain=lambda: jobs.get_job_status(job_id))


def test_launch_progress_cancel_and_resume_as_ray_jobs(ray_head, settings, theme, tmp_path,
                                                       monkeypatch):
    from ray.job_submission import JobStatus

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"    # also the tiny configs' store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    settings.THEMETUNE_RAY_JOB_ADDRESS = ray_head
    jobs = ray_jobs._client(ray_head)
    mlflow = MlflowClient(tracking)

    # Launch ("Launch" on the new-study form).
    study_id = launch.launch_new_study(theme_id=theme.id, files=study_files(
        settings, theme.id, n_trials=N_TRIALS, epochs=EPOCHS))
    study = selectors.study_get(study_id=study_id)
    first_job = study.ray_job_id
    assert study.launcher == "ray" and first_job.startswith(f"themetune-study-{study_id}-")
    log = lambda: launch.log_tail(selectors.study_get(study_id=study_id))[-3000:]  # noqa: E731

    # Progress, written by the job's driver: a trial's first epoch in the DB record.
    def an_epoch():
        study = selectors.study_get(study_id=study_id)
        assert study.status != "failed", (study.error, log())
        return any(t.metrics for t in selectors.trial_list(study_id=study_id))

    wait_until("recorded epoch", an_epoch, explain=log)
    study = selectors.study_get(study_id=study_id)
    assert study.status == "running", (study.status, log())
    parent_run = study.mlflow_parent_run_id
    assert parent_run

    # Cancel ("Cancel study"): `ray job stop`; the study ends killed, the job STOPPED,
    # the driver has closed MLflow's parent run as KILLED.
    assert launch.cancel_study(study_id=study_id) is True
    study = wait_until("end after the cancel", lambda: ended(study_id), explain=log)
    assert study.status == "killed", (study.status, study.error, log())
    assert job_end(jobs, first_job) == JobStatus.STOPPED
    assert mlflow.get_run(parent_run).info.status == "KILLED", log()
    trials = selectors.trial_list(study_id=study_id)
    assert "RUNNING" not in {t.state for t in trials}, [(t.number, t.state) for t in trials]
    assert launch.resume_command(study), "a killed study offers 'Resume study'"

    # Resume ("Resume study"): a new Ray job, into the same row and MLflow parent run.
    launch.resume_study(study_id=study_id)
    study = selectors.study_get(study_id=study_id)
    assert study.launcher == "ray" and study.ray_job_id not in ("", first_job)
    study = wait_until("end after the resume", lambda: ended(study_id), explain=log)
    assert study.status == "completed", (study.status, study.error, log())
    assert job_end(jobs, study.ray_job_id) == JobStatus.SUCCEEDED   # its driver is done
    assert study.mlflow_parent_run_id == parent_run
    trials = selectors.trial_list(study_id=study_id)
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))
    assert {t.state for t in trials} == {"COMPLETE"}, [(t.number, t.state) for t in trials]
    assert all(len(t.metrics) == EPOCHS for t in trials), [len(t.metrics) for t in trials]

    # MLflow: the parent run finished; one live child run per trial, each finished.
    parent = mlflow.get_run(parent_run)
    assert parent.info.status == "FINISHED"
    children = mlflow.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run}'")
    assert len(children) == N_TRIALS
    assert {c.info.status for c in children} == {"FINISHED"}, [c.info.status for c in children]
    assert {t.mlflow_run_id for t in trials} == {c.info.run_id for c in children}

    # The best model is registered and is the theme's champion.
    champion = mlflow.get_model_version_by_alias(f"{theme.name}_model", "champion")
    assert study.registered_model == f"{theme.name}_model"
    assert str(champion.version) == str(study.registered_version)

