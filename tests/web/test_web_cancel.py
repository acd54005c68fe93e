"""A cancel is never lost, and nothing but the watchdog and a POST signals a process.

- a real launch (launch.py, local Ray, MLflow in a SQLite file) from a launcher that has
  SIGINT ignored, as a server started with `&` has: cancelled while its driver is being
  started, or once its trials run, it ends as after a Ctrl-C (exit 130's "interrupted"
  line, row and runs KILLED, no traceback);
- the driver's own look at its row (CancelWatch), and the start record that keeps it;
- page views with a row forged to name another process leave it and the row alone;
- `manage.py watch_studies --once` ends dead launchers' studies and escalates cancels,
  to our launch.py only;
- the admin cannot edit what the launcher acts on.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.forms.models import model_to_dict
from django.urls import reverse
from django.utils import timezone

from data_access import selectors
from data_access.models import TuningStudy
from tests.web.test_web_access import own_routes
from tuning.processes import process_start_time
from web import launch, study_configs
from web.launch import local

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 180   # a real launch on a loaded 2-core machine


# ---------------------------------------------------------------- real launches

@pytest.fixture
def real_launch(settings, theme, tmp_path, monkeypatch):
    """launch_new_study of the tiny preset with the real launch.py, started while this
    process ignores SIGINT; every process of it is gone after the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    preset = study_configs.presets(Path(settings.THEMETUNE_CONFIGS_DIR))[0]
    started = []

    def start(*, n_trials: int = 2, epochs: int = 1) -> int:
        values = study_configs.initial_values(preset, class_count=4)
        values.update(n_trials=str(n_trials), num_epochs=str(epochs))
        files = study_configs.build(values, theme_id=theme.id)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            started.append(launch.launch_new_study(theme_id=theme.id, files=files))
        finally:
            signal.signal(signal.SIGINT, previous)
        return started[-1]

    yield start
    for study in TuningStudy.objects.filter(pk__in=started).exclude(process_id=None):
        local.kill_group(local.ProcessRef(study.process_id, study.process_start), 9)


def wait_for(what: str, check, explain=lambda: "", timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s: {explain()}"
        time.sleep(0.3)
    return found


def driver_exited(study_id: int) -> bool:
    study = selectors.study_get(study_id=study_id)
    return bool(study.process_id) and not local.is_running(
        local.ProcessRef(study.process_id, study.process_start))


def log_of(study_id: int) -> str:
    return launch.log_tail(selectors.study_get(study_id=study_id))


@pytest.mark.slow
def test_a_cancel_while_the_driver_is_being_started_wins(real_launch, monkeypatch):
    """The cancel arrives before the driver's process exists: no signal can reach it;
    it reads the cancel from its row and stops before anything is created."""
    real_start = local.start

    def cancel_then_start(command, **kwargs):
        study_id = int(command[command.index("--record-id") + 1])
        assert launch.cancel_study(study_id=study_id) is True
        return real_start(command, **kwargs)

    monkeypatch.setattr(local, "start", cancel_then_start)
    study_id = real_launch()
    wait_for("driver exit", lambda: driver_exited(study_id), lambda: log_of(study_id))
    study = selectors.study_get(study_id=study_id)
    log = log_of(study_id)
    assert study.status == "killed", (study.status, study.error, log)
    assert "interrupted before the study started" in log
    assert "Traceback" not in log and "MLflow experiment" not in log, log


@pytest.mark.ray
def test_a_running_study_cancelled_from_a_server_that_ignores_sigint_ends_killed(
        real_launch, client, tuner, tmp_path):
    from mlflow.tracking import MlflowClient

    study_id = real_launch(n_trials=1, epochs=30)
    # Cancel once Ray runs a trial: its MLflow run and the parent are open then.
    wait_for("started trial", lambda: selectors.trial_list(study_id=study_id),
             lambda: log_of(study_id))
    client.force_login(tuner)
    client.post(reverse("study_cancel", kwargs={"study_id": study_id}))
    wait_for("driver exit", lambda: driver_exited(study_id), lambda: log_of(study_id))
    study = selectors.study_get(study_id=study_id)
    log = log_of(study_id)
    assert study.status == "killed", (study.status, study.error, log)
    assert "interrupted: running trials and the parent run were marked KILLED" in log, log
    assert "Traceback" not in log, log
    assert "RUNNING" not in {t.state for t in selectors.trial_list(study_id=study_id)}
    mlflow = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs([study.mlflow_experiment_id])
    assert runs and {r.info.status for r in runs} <= {"KILLED", "FINISHED"}, runs
    assert mlflow.get_run(study.mlflow_parent_run_id).info.status == "KILLED"


# ---------------------------------------------------------------- the driver's side

@pytest.fixture
def pending_study(theme):
    return TuningStudy.objects.create(
        theme=theme, name="p", status="pending", direction="maximize", metric="test_acc",
        n_trials=1, optuna_study_name="p", launcher="local")


def test_the_driver_reads_a_cancel_and_stops_itself_with_sigint(pending_study):
    from data_access import services
    from data_access.recorder import cancel_watch
    from tuning.recovery.interrupts import PHASE_STUDY_STARTED

    watch = cancel_watch(pending_study.id, interval_s=0.05)
    watch.on_phase(PHASE_STUDY_STARTED)     # no cancel yet: goes on, and starts looking
    services.study_request_cancel(study_id=pending_study.id)
    try:
        with pytest.raises(KeyboardInterrupt):
            time.sleep(10)     # the watch's SIGINT ends this
    finally:
        watch.stop()
    with pytest.raises(KeyboardInterrupt):
        watch.check()


def test_the_watch_sends_no_second_sigint_once_the_study_is_stopping():
    """A second SIGINT would stop the study at once, without Tune's graceful stop."""
    from tuning.recovery.interrupts import PHASE_STUDY_STARTED, CancelWatch, StopRequest

    cancelled = []
    watch = CancelWatch(lambda: bool(cancelled), interval_s=0.02)
    previous = signal.signal(signal.SIGUSR1, lambda *args: None)   # Tune's, in a study
    try:
        with StopRequest() as stop:
            watch.on_phase(PHASE_STUDY_STARTED)
            cancelled.append(True)
            signal.raise_signal(signal.SIGINT)    # the canceller's own SIGINT
            assert stop.requested
            time.sleep(0.3)    # a second SIGINT would raise KeyboardInterrupt here
    finally:
        watch.stop()
        signal.signal(signal.SIGUSR1, previous)


def test_a_driver_with_sigint_ignored_accepts_it_again_when_it_has_a_row(pending_study):
    from data_access.recorder import cancel_watch

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cancel_watch(pending_study.id)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_recording_the_start_keeps_a_pending_cancel_but_not_a_stale_one(pending_study):
    from data_access import services
    from data_access.services.launches import study_cancel_pending
    from tuning.tracking.recording import StudyStart

    start = StudyStart(theme_id=pending_study.theme_id, name="p", direction="maximize",
                       metric="test_acc", n_trials=1, optuna_study_name="p",
                       optuna_storage=None, mlflow_experiment_id="1",
                       mlflow_parent_run_id="r", resolved_config={}, param_space={})
    services.study_request_cancel(study_id=pending_study.id)
    services.study_start_existing(study_id=pending_study.id, event=start, driver_pid=1)
    assert study_cancel_pending(study_id=pending_study.id)
    # A study killed earlier and resumed from a shell: that cancel was for the old driver.
    TuningStudy.objects.filter(pk=pending_study.id).update(status="killed")
    services.study_start_existing(study_id=pending_study.id, event=start, driver_pid=1)
    assert not study_cancel_pending(study_id=pending_study.id)
    assert TuningStudy.objects.get(pk=pending_study.id).cancel_requested_at is None


# ---------------------------------------------------------------- page views, watchdog

@pytest.fixture
def sleeper():
    """A process of this user that is not a study: a forged row may name it."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def forge(study_id: int, pid: int, *, cancelled_ago_s: float = 3600) -> None:
    TuningStudy.objects.filter(pk=study_id).update(
        status="running", launcher="local", process_id=pid,
        process_start=process_start_time(pid),
        cancel_requested_at=timezone.now() - timedelta(seconds=cancelled_ago_s))


def test_page_views_never_signal_a_process_nor_change_the_row(client, tuner, theme,
                                                              make_study, sleeper):
    study_id = make_study(theme, finish=False)
    forge(study_id, sleeper.pid)
    before = model_to_dict(TuningStudy.objects.get(pk=study_id))
    client.force_login(tuner)
    values = {"study_id": study_id, "kind": "history"}
    pages = [reverse(name, kwargs={k: values[k] for k in pattern.converters})
             for name, pattern in own_routes() if "study_id" in pattern.converters]
    assert len(pages) >= 8
    for url in [reverse("study_list"), *pages]:
        client.get(url)
    assert sleeper.poll() is None, "a page view killed the process"
    assert model_to_dict(TuningStudy.objects.get(pk=study_id)) == before


def test_the_watchdog_ends_studies_whose_driver_is_gone(theme, make_study):
    gone = subprocess.Popen(["true"])
    gone.wait()
    failed, killed = make_study(theme, finish=False), make_study(theme, finish=False)
    for study_id in (failed, killed):
        forge(study_id, gone.pid)
    TuningStudy.objects.filter(pk=failed).update(cancel_requested_at=None)
    call_command("watch_studies", "--once")
    assert TuningStudy.objects.get(pk=failed).status == "failed"
    assert TuningStudy.objects.get(pk=killed).status == "killed"


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_the_watchdog_refuses_an_interval_it_cannot_sleep(interval):
    with pytest.raises(SystemExit) as info:
        call_command("watch_studies", "--interval", interval)
    assert info.value.code == 2


def test_the_watchdog_escalates_a_cancel_to_our_driver_only(theme, make_study, sleeper,
                                                            settings, tmp_path):
    script = tmp_path / "launch.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                      "print('up', flush=True)\ntime.sleep(60)\n")
    settings.THEMETUNE_LAUNCH_SCRIPT = str(script)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        driver.stdout.readline()    # its SIGINT is ignored from here on
        stubborn, forged = make_study(theme, finish=False), make_study(theme, finish=False)
        forge(stubborn, driver.pid)
        forge(forged, sleeper.pid)
        call_command("watch_studies", "--once")
        assert driver.wait(timeout=10) == -signal.SIGKILL
        assert sleeper.poll() is None, "the watchdog signalled a process not ours"
        call_command("watch_studies", "--once")
        assert TuningStudy.objects.get(pk=stubborn).status == "killed"
        # The forged row names no driver of ours: nothing of it runs, so it ended.
        assert TuningStudy.objects.get(pk=forged).status == "killed"
        assert sleeper.poll() is None
    finally:
        driver.kill()
        driver.wait()


def test_the_admin_shows_what_the_launcher_acts_on_read_only(client, django_user_model,
                                                             theme, make_study):
    admin = django_user_model.objects.create_superuser("boss", password="x")
    client.force_login(admin)
    study_id = make_study(theme)
    response = client.get(reverse("admin:data_access_tuningstudy_change", args=[study_id]))
    fields = response.context["adminform"].form.fields
    for name in ("process_id", "process_start", "launcher", "cancel_requested_at",
                 "run_dir", "ray_job_id"):
        assert name not in fields, name
    assert "name" in fields
