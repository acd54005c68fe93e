"""Start the studies that the web UI launches: a new one, or one resumed where it stopped.

A study runs exactly as a user runs it: `launch.py --configs DIR --theme-id N
--record-id ID`, as a Ray job when THEMETUNE_RAY_JOB_ADDRESS is set, else as a local
background process. launch.py fills in the pending study row (--record-id); what it
cannot say itself (that its process is gone) web.launch.follow notices.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection
from django.utils import timezone

from data_access import selectors, services
from data_access.models import TuningStudy
from data_access.selectors import StudyInfo
from tuning.errors import LaunchError
from tuning.states import StudyStatus
from web.launch import local, ray_jobs
from web.study_configs import StudyFiles

LOG_NAME = "launch.log"


def backend() -> str:
    return (TuningStudy.Launcher.RAY_JOB if settings.THEMETUNE_RAY_JOB_ADDRESS
            else TuningStudy.Launcher.LOCAL)


def run_dir(study_id: int) -> Path:
    return Path(settings.THEMETUNE_RUNS_DIR) / f"study-{study_id}"


def launch_new_study(*, theme_id: int, files: StudyFiles,
                     warm_start: tuple[str, ...] | list[str] = ()) -> int:
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
    # A Ray job's driver runs in a copy of the folder: its configs are relative to it.
    configs = ("configs" if study.launcher == TuningStudy.Launcher.RAY_JOB
               else str(folder / "configs"))
    _start_driver(study.id, study.launcher, folder,
                  _launch_args(theme_id, study.id, configs, warm_start))
    return study.id


def _launch_args(theme_id: int, study_id: int, configs: str, warm_start=()) -> list[str]:
    warm = ["--warm-start", ",".join(warm_start)] if warm_start else []
    return ["--configs", configs, "--theme-id", str(theme_id), "--record-id", str(study_id),
            *warm]


def resume_command(study: StudyInfo) -> str | None:
    """The command that continues this ended study, or None when it cannot be resumed
    (it is running, completed, or never reached Ray Tune)."""
    if _resume_refusal(study):
        return None
    from tuning.recovery import resume as resume_files

    return f"{resume_files.resume_command(study.experiment_path)} --record-id {study.id}"


def resume_study(*, study_id: int) -> None:
    """Continue a killed or failed study where it stopped: `launch.py --resume
    <its Tune experiment> --record-id ID`, with this UI's launcher, into the same row,
    MLflow parent run and Optuna study. Finished trials are not run again."""
    study = selectors.study_get(study_id=study_id)
    refusal = _resume_refusal(study)
    if refusal:
        reason, fix = refusal
        raise LaunchError(f"study {study_id} {reason}.", fix=fix)
    folder = Path(study.run_dir) if study.run_dir else run_dir(study_id)
    folder.mkdir(parents=True, exist_ok=True)
    if not study.run_dir:
        services.study_set_run_dir(study_id=study_id, run_dir=str(folder))
    launcher = backend()
    if not services.study_prepare_resume(study_id=study_id, launcher=launcher):
        raise LaunchError(f"study {study_id} changed meanwhile.", fix="reload the page.")
    args = ["--resume", study.experiment_path, "--record-id", str(study_id)]
    _start_driver(study_id, launcher, folder, args, append_log=True)


def _resume_refusal(study: StudyInfo) -> tuple[str, str] | None:
    """Why the study cannot be resumed and what to do instead; None when it can."""
    if study.is_active:
        return f"is still {study.status}", "wait for it to end, or cancel it first."
    if study.status == StudyStatus.COMPLETED:
        return "already completed", "start a new study instead."
    from tuning.recovery import resume as resume_files

    reason = resume_files.why_not_resumable(study.experiment_path)
    if reason:
        return f"cannot be resumed: {reason}", "start a new study instead."
    return None


def _start_driver(study_id: int, launcher: str, folder: Path, args: list[str], *,
                  append_log: bool = False) -> None:
    """`launch.py ARGS` as a Ray job or a local process. Raises LaunchError, and marks
    the study failed, when it could not be started."""
    try:
        if launcher == TuningStudy.Launcher.RAY_JOB:
            _submit_ray_job(study_id, folder, args)
        else:
            _start_local(study_id, folder, args, append_log=append_log)
    except LaunchError as exc:
        services.study_mark_ended(study_id=study_id, status=StudyStatus.FAILED,
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
        # MLflow's artifact download bars are a third of a driver's log otherwise (the
        # driver sets this default too; a Ray job's env states it for its own processes).
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": os.environ.get(
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
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

    from tuning.config.yaml_loader import read_yaml

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
    # A resume has no configs of its own: it reads the experiment's copies.
    (folder / "configs").mkdir(exist_ok=True)
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
