"""Follow and stop the studies that the web UI launched.

launch.py records a study's start and end itself; this module only notices what it
cannot say: that its process or Ray job is gone (a user error before the study started,
a crash, a cancel) while the row still reads pending/running. It also stops a study on
request (SIGINT to the local driver, or `ray job stop`), and reads the study's output.
Noticing and escalating is the watchdog's (`manage.py watch_studies`): page views only
read, so that no GET, nor a row edited to name another pid, signals a process.
"""

from __future__ import annotations

import os
import re
import signal
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from data_access import selectors, services
from data_access.models import TuningStudy
from data_access.selectors import StudyInfo
from tuning.errors import LaunchError
from tuning.states import StudyStatus
from web.launch import local, ray_jobs
from web.launch.start import LOG_NAME

_TAIL_BYTES = 64 * 1024
# CSI sequences (colours, cursor moves: ESC [ ... final byte) and OSC ones (titles,
# links: ESC ] ... BEL or ESC \), then any other two-character escape.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def cancel_study(*, study_id: int) -> bool:
    """Ask the study to stop: note it in its row, then SIGINT to the local driver or
    `ray job stop`. It ends KILLED once its driver has marked its runs; the driver also
    reads the note, so a cancel wins even when no signal can reach it (not started yet,
    SIGINT ignored); `manage.py watch_studies` escalates if it hangs. False when it had
    already ended. Raises LaunchError for a study this UI did not launch (its driver
    belongs to whoever started it)."""
    study = selectors.study_get(study_id=study_id)
    if not study.launcher:
        raise LaunchError(f"study {study_id} was started from the command line, not from "
                          f"this web UI.", fix="stop it where it runs (Ctrl+C, or `ray job "
                          "stop`).")
    if not services.study_request_cancel(study_id=study_id):
        return False
    if study.launcher == TuningStudy.Launcher.LOCAL and study.process_id:
        if not _signal_driver(study, local.interrupt):
            services.study_mark_ended(study_id=study_id, status=StudyStatus.KILLED,
                                      error="cancelled")
    elif study.launcher == TuningStudy.Launcher.RAY_JOB and study.ray_job_id:
        try:
            ray_jobs.stop(address=settings.THEMETUNE_RAY_JOB_ADDRESS, job_id=study.ray_job_id)
        except ray_jobs.RayJobError as exc:
            raise LaunchError(f"{exc}.", fix="stop it with `ray job stop "
                              f"{study.ray_job_id}`.") from exc
    # Else its driver is being started right now: it reads the note and stops at once.
    return True


def _ref(study: StudyInfo) -> local.ProcessRef:
    return local.ProcessRef(pid=study.process_id or 0, start=study.process_start)


def _driver_alive(study: StudyInfo) -> bool:
    """The row's process is running, and it is launch.py (a pid is only trusted so far)."""
    ref = _ref(study)
    return local.is_running(ref) and local.runs_script(ref, settings.THEMETUNE_LAUNCH_SCRIPT)


def _signal_driver(study: StudyInfo, send) -> bool:
    """`send(ref)` when the row's process is our running driver; False otherwise."""
    return _driver_alive(study) and send(_ref(study))


def refresh_study(study: StudyInfo) -> StudyInfo:
    """The study, after noting an end that its driver could not record, and escalating
    a cancel it has not obeyed. Signals processes: for the watchdog
    (`manage.py watch_studies`) and POSTs, never for a page view."""
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
        return _end_if_launch_abandoned(study)
    if _driver_alive(study):
        if study.cancel_requested_at is not None:
            _escalate(study, timezone.now() - study.cancel_requested_at)
        return False
    if study.cancel_requested_at is not None:
        return services.study_mark_ended(study_id=study.id, status=StudyStatus.KILLED,
                                         error="cancelled")
    return services.study_mark_ended(study_id=study.id, status=StudyStatus.FAILED,
                                     error=_exit_reason(log_tail(study)))


def _end_if_launch_abandoned(study: StudyInfo) -> bool:
    """A row still without a process is being launched, unless it was cancelled longer
    ago than the grace time (the server stopped mid-launch): then nothing will run it."""
    if study.cancel_requested_at is None:
        return False
    waited = timezone.now() - study.cancel_requested_at
    if waited.total_seconds() <= settings.THEMETUNE_CANCEL_GRACE_S:
        return False
    return services.study_mark_ended(study_id=study.id, status=StudyStatus.KILLED,
                                     error="cancelled before it started")


def _escalate(study: StudyInfo, waited: timedelta) -> None:
    grace = settings.THEMETUNE_CANCEL_GRACE_S
    if waited.total_seconds() > 2 * grace:
        _signal_driver(study, lambda ref: local.kill_group(ref, signal.SIGKILL))
    elif waited.total_seconds() > grace:
        _signal_driver(study, lambda ref: local.kill_group(ref, signal.SIGTERM))


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
        return services.study_mark_ended(study_id=study.id, status=StudyStatus.KILLED,
                                         error="cancelled")
    return services.study_mark_ended(study_id=study.id, status=StudyStatus.FAILED,
                                     error=_exit_reason(log_tail(study)) or job.message)


def log_tail(study: StudyInfo, max_bytes: int = _TAIL_BYTES) -> str:
    """The end of the study's output, as a person reads it (readable_log)."""
    return readable_log(_raw_tail(study, max_bytes))


def readable_log(text: str) -> str:
    """A terminal's output as plain text: no colour or cursor escapes (Ray's and
    tqdm's), and of a line that a progress bar redrew with carriage returns, only what
    was left showing."""
    text = _ANSI_ESCAPE.sub("", text).replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def _raw_tail(study: StudyInfo, max_bytes: int) -> str:
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
