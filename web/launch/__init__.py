"""Start, follow and stop the studies that the web UI launches.

A study runs exactly as a user runs it: `launch.py --configs DIR --theme-id N
--record-id ID`, as a Ray job when THEMETUNE_RAY_JOB_ADDRESS is set, else as a local
background process. launch.py fills in the pending study row (--record-id); this module
only notices what launch.py cannot say itself: that its process is gone (a user error
before the study started, a crash, a cancel) while the row still reads pending/running.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection
from django.utils import timezone

from data_access import selectors, services
from data_access.models import TuningStudy
from data_access.selectors import StudyInfo
from tuning.errors import ThemetuneError
from web.launch import local, ray_jobs
from web.study_configs import StudyFiles

LOG_NAME = "launch.log"
_TAIL_BYTES = 64 * 1024


class LaunchError(ThemetuneError):
    """The study could not be started, or its runner cannot be reached."""


def backend() -> str:
    return (TuningStudy.Launcher.RAY_JOB if settings.THEMETUNE_RAY_JOB_ADDRESS
            else TuningStudy.Launcher.LOCAL)


def run_dir(study_id: int) -> Path:
    return Path(settings.THEMETUNE_RUNS_DIR) / f"study-{study_id}"


# ---------------------------------------------------------------- start


def launch_new_study(*, theme_id: int, files: StudyFiles) -> int:
    """Record a pending study, write its configs and start it; returns its id.

    Returns at once: the study runs in the background. Raises LaunchError (and marks
    the study failed) when it could not be started."""
    config = files.config
    study = services.study_create_pending(
        theme_id=theme_id, name=config.run_name, optuna_study_name=config.study.name,
        direction=config.study.direction, metric=config.study.metric,
        n_trials=config.study.n_trials, resolved_config=config.resolved(),
        launcher=backend())
    folder = run_dir(study.id)
    files.write(folder / "configs")
    services.study_set_run_dir(study_id=study.id, run_dir=str(folder))
    try:
        if study.launcher == TuningStudy.Launcher.RAY_JOB:
            _submit_ray_job(study.id, folder, _launch_args(theme_id, study.id, "configs"))
        else:
            _start_local(study.id, folder,
                         _launch_args(theme_id, study.id, str(folder / "configs")))
    except LaunchError as exc:
        services.study_mark_ended(study_id=study.id, status=TuningStudy.Status.FAILED,
                                  error=exc.one_line())
        raise
    return study.id


def _launch_args(theme_id: int, study_id: int, configs: str) -> list[str]:
    return ["--configs", configs, "--theme-id", str(theme_id), "--record-id", str(study_id)]


def resume_command(study: StudyInfo) -> str | None:
    """The command that continues this ended study, or None when it cannot be resumed
    (it is running, completed, or never reached Ray Tune)."""
    if study.is_active or study.status == TuningStudy.Status.COMPLETED:
        return None
    from tuning import resume as resume_files

    if resume_files.why_not_resumable(study.experiment_path):
        return None
    return f"{resume_files.resume_command(study.experiment_path)} --record-id {study.id}"


def resume_study(*, study_id: int) -> None:
    """Continue a killed or failed study where it stopped: `launch.py --resume
    <its Tune experiment> --record-id ID`, with this UI's launcher, into the same row,
    MLflow parent run and Optuna study. Finished trials are not run again."""
    study = selectors.study_get(study_id=study_id)
    if study.is_active:
        raise LaunchError(f"study {study_id} is still {study.status}.",
                          fix="wait for it to end, or cancel it first.")
    if study.status == TuningStudy.Status.COMPLETED:
        raise LaunchError(f"study {study_id} already completed.",
                          fix="start a new study instead.")
    from tuning import resume as resume_files

    reason = resume_files.why_not_resumable(study.experiment_path)
    if reason:
        raise LaunchError(f"study {study_id} cannot be resumed: {reason}.",
                          fix="start a new study instead.")
    folder = Path(study.run_dir) if study.run_dir else run_dir(study_id)
    folder.mkdir(parents=True, exist_ok=True)
    if not study.run_dir:
        services.study_set_run_dir(study_id=study_id, run_dir=str(folder))
    launcher = backend()
    if not services.study_prepare_resume(study_id=study_id, launcher=launcher):
        raise LaunchError(f"study {study_id} changed meanwhile.", fix="reload the page.")
    args = ["--resume", study.experiment_path, "--record-id", str(study_id)]
    try:
        if launcher == TuningStudy.Launcher.RAY_JOB:
            configs = folder / "configs"
            configs.mkdir(exist_ok=True)   # the resume reads the experiment's own copies
            _submit_ray_job(study_id, folder, args)
        else:
            _start_local(study_id, folder, args, append_log=True)
    except LaunchError as exc:
        services.study_mark_ended(study_id=study_id, status=TuningStudy.Status.FAILED,
                                  error=exc.one_line())
        raise


def child_database_url() -> str | None:
    """DATABASE_URL of the database this process uses (in tests, the test database),
    for the study's driver; None where the environment's own must do."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{os.path.abspath(s['NAME'])}"
    if connection.vendor == "postgresql":
        auth = quote(s.get("USER") or "", safe="")
        if s.get("PASSWORD"):
            auth += ":" + quote(s["PASSWORD"], safe="")
        host = s.get("HOST") or "localhost"
        port = f":{s['PORT']}" if s.get("PORT") else ""
        return f"postgresql://{auth + '@' if auth else ''}{host}{port}/{quote(s['NAME'])}"
    return None


def _driver_env() -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "web.settings",
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        # Tune's own SIGINT handler would end the run "normally" and record it
        # completed; without it, SIGINT reaches launch.py as KeyboardInterrupt.
        "TUNE_DISABLE_SIGINT_HANDLER": "1",
        "PYTHONUNBUFFERED": "1",
    }
    url = child_database_url()
    if url:
        env["DATABASE_URL"] = url
    return env


def _start_local(study_id: int, folder: Path, args: list[str], *,
                 append_log: bool = False) -> None:
    env = {**os.environ, **_driver_env()}
    # An exported run id would hijack the study's parent run (mlflow#15713).
    env.pop("MLFLOW_RUN_ID", None)
    command = [sys.executable, settings.THEMETUNE_LAUNCH_SCRIPT, *args]
    log = folder / LOG_NAME
    with log.open("a" if append_log else "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
    try:
        ref = local.start(command, cwd=settings.BASE_DIR, env=env, log_path=log)
    except (OSError, local.LocalStartError) as exc:
        raise LaunchError(f"could not start launch.py: {exc}.",
                          fix=f"see {log}.") from exc
    services.study_set_launched(study_id=study_id, process_id=ref.pid,
                                process_start=ref.start)


def _absolute_paths(config_yaml: Path, repo: Path) -> None:
    """Relative paths in config.yaml mean the repository's folders, as for a local
    launch; the job's driver runs in a scratch working_dir, so make them absolute."""
    import yaml

    from tuning.config_errors import read_yaml

    data = read_yaml(config_yaml)
    for section, key in (("ray", "storage_path"), (None, "cache_dir")):
        holder = data.get(section) if section else data
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, str) and "://" not in value and not os.path.isabs(value):
            holder[key] = str(repo / value)
    mlflow = data.get("mlflow")
    uri = mlflow.get("tracking_uri") if isinstance(mlflow, dict) else None
    if isinstance(uri, str) and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        mlflow["tracking_uri"] = f"sqlite:///{repo / uri.removeprefix('sqlite:///')}"
    config_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _submit_ray_job(study_id: int, folder: Path, args: list[str]) -> None:
    address = settings.THEMETUNE_RAY_JOB_ADDRESS
    repo = Path(settings.BASE_DIR)
    script = Path(settings.THEMETUNE_LAUNCH_SCRIPT)
    job_dir = ray_jobs.stage_working_dir(repo=repo, configs=folder / "configs",
                                         job_dir=folder / "job", entry_point=script)
    if (job_dir / "configs" / "config.yaml").is_file():   # a resume reads its own copies
        _absolute_paths(job_dir / "configs" / "config.yaml", repo)
    env = _driver_env()
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    entrypoint = shlex.join(["python", script.name, *args])
    try:
        job_id = ray_jobs.submit(
            address=address, entrypoint=entrypoint, working_dir=job_dir, env_vars=env,
            submission_id=f"themetune-study-{study_id}-{timezone.now():%Y%m%d%H%M%S}",
            metadata={"themetune_study_id": str(study_id)})
    except ray_jobs.RayJobError as exc:
        raise LaunchError(f"{exc}.", fix="check THEMETUNE_RAY_ADDRESS (the dashboard "
                          "address, http://HOST:8265) and RAY_AUTH_MODE=token with the "
                          "cluster's token.") from exc
    services.study_set_launched(study_id=study_id, ray_job_id=job_id)


# ---------------------------------------------------------------- cancel


def cancel_study(*, study_id: int) -> bool:
    """Ask the study to stop: SIGINT to the local driver or `ray job stop`. It ends
    KILLED once its driver has marked its runs; refresh_study escalates if it hangs.
    False when it had already ended. Raises LaunchError for a study this UI did not
    launch (its driver belongs to whoever started it)."""
    study = selectors.study_get(study_id=study_id)
    if not study.launcher:
        raise LaunchError(f"study {study_id} was started from the command line, not from "
                          f"this web UI.", fix="stop it where it runs (Ctrl+C, or `ray job "
                          "stop`).")
    if not services.study_request_cancel(study_id=study_id):
        return False
    if study.launcher == TuningStudy.Launcher.LOCAL and study.process_id:
        if not local.interrupt(_ref(study)):
            services.study_mark_ended(study_id=study_id, status=TuningStudy.Status.KILLED,
                                      error="cancelled")
    elif study.launcher == TuningStudy.Launcher.RAY_JOB and study.ray_job_id:
        try:
            ray_jobs.stop(address=settings.THEMETUNE_RAY_JOB_ADDRESS, job_id=study.ray_job_id)
        except ray_jobs.RayJobError as exc:
            raise LaunchError(f"{exc}.", fix="stop it with `ray job stop "
                              f"{study.ray_job_id}`.") from exc
    else:
        # Its launch failed before a process or job existed: nothing runs.
        services.study_mark_ended(study_id=study_id, status=TuningStudy.Status.KILLED,
                                  error="cancelled before it started")
    return True


def _ref(study: StudyInfo) -> local.ProcessRef:
    return local.ProcessRef(pid=study.process_id or 0, start=study.process_start)


# ---------------------------------------------------------------- follow


def refresh_study(study: StudyInfo) -> StudyInfo:
    """The study, after noting an end that its driver could not record."""
    if not study.is_active or not study.launcher:
        return study
    if study.launcher == TuningStudy.Launcher.LOCAL:
        changed = _refresh_local(study)
    else:
        changed = _refresh_ray_job(study)
    return selectors.study_get(study_id=study.id) if changed else study


def refresh_active() -> None:
    for study in selectors.study_list_active():
        refresh_study(study)


def _refresh_local(study: StudyInfo) -> bool:
    if not study.process_id:
        return False    # being launched right now
    ref = _ref(study)
    if local.is_running(ref):
        if study.cancel_requested_at is not None:
            _escalate(ref, timezone.now() - study.cancel_requested_at)
        return False
    if study.cancel_requested_at is not None:
        return services.study_mark_ended(study_id=study.id, status=TuningStudy.Status.KILLED,
                                         error="cancelled")
    return services.study_mark_ended(study_id=study.id, status=TuningStudy.Status.FAILED,
                                     error=_exit_reason(log_tail(study)))


def _escalate(ref: local.ProcessRef, waited: timedelta) -> None:
    grace = settings.THEMETUNE_CANCEL_GRACE_S
    if waited.total_seconds() > 2 * grace:
        local.kill_group(ref, signal.SIGKILL)
    elif waited.total_seconds() > grace:
        local.kill_group(ref, signal.SIGTERM)


def _refresh_ray_job(study: StudyInfo) -> bool:
    if not study.ray_job_id:
        return False
    try:
        job = ray_jobs.state(address=settings.THEMETUNE_RAY_JOB_ADDRESS, job_id=study.ray_job_id)
    except ray_jobs.RayJobError:
        # The cluster is unreachable for now: the study may well be running.
        return False
    if not job.ended:
        return False
    if job.status == "STOPPED" or study.cancel_requested_at is not None:
        return services.study_mark_ended(study_id=study.id, status=TuningStudy.Status.KILLED,
                                         error="cancelled")
    return services.study_mark_ended(study_id=study.id, status=TuningStudy.Status.FAILED,
                                     error=_exit_reason(log_tail(study)) or job.message)


def log_tail(study: StudyInfo, max_bytes: int = _TAIL_BYTES) -> str:
    """The end of the study's output: the local log file, or the Ray job's logs."""
    if study.launcher == TuningStudy.Launcher.RAY_JOB and study.ray_job_id:
        try:
            text = ray_jobs.logs(address=settings.THEMETUNE_RAY_JOB_ADDRESS,
                                 job_id=study.ray_job_id)
        except ray_jobs.RayJobError as exc:
            return str(exc)
        return text[-max_bytes:]
    if not study.run_dir:
        return ""
    path = Path(study.run_dir) / LOG_NAME
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - max_bytes, 0))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _exit_reason(tail: str) -> str:
    """launch.py's one-line `error: ...` for a user error, else the output's last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    last = lines[-1] if lines else "no output"
    return f"the study's process ended without recording an end; its last output: {last}"
