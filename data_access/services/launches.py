"""What the web UI's launcher notes about the studies it starts: the pending row, the
run folder, the process or Ray job, a resume, a cancel request, and an end that the
driver could not record itself."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone as django_timezone

from data_access.models import TuningStudy, TuningTrial
from data_access.services._values import json_safe
from data_access.services.themes import require_theme
from tuning.states import ACTIVE_STATUSES, StudyStatus, TrialState


def study_create_pending(*, theme_id: int, name: str, optuna_study_name: str,
                         direction: str, metric: str, n_trials: int,
                         resolved_config: dict[str, Any], launcher: str) -> TuningStudy:
    """The row of a study about to be launched; launch.py --record-id fills it in."""
    if launcher not in TuningStudy.Launcher.values:
        raise ValueError(f"launcher must be one of {TuningStudy.Launcher.values}, "
                         f"got {launcher!r}")
    with transaction.atomic():
        require_theme(theme_id)
        return TuningStudy.objects.create(
            theme_id=theme_id, name=name, status=StudyStatus.PENDING,
            direction=direction, metric=metric, n_trials=n_trials,
            resolved_config=json_safe(resolved_config),
            optuna_study_name=optuna_study_name, launcher=launcher)


def study_set_run_dir(*, study_id: int, run_dir: str) -> None:
    TuningStudy.objects.filter(pk=study_id).update(run_dir=run_dir)


def study_set_launched(*, study_id: int, process_id: int | None = None,
                       process_start: str = "", ray_job_id: str = "") -> None:
    fields: dict[str, Any] = {"process_id": process_id, "process_start": process_start}
    if ray_job_id:
        fields["ray_job_id"] = ray_job_id
    TuningStudy.objects.filter(pk=study_id).update(**fields)


def study_prepare_resume(*, study_id: int, launcher: str) -> bool:
    """Reopen an ended (killed or failed) study for `launch.py --resume`: pending again,
    run by `launcher`; its trials and results stay. False when it is not ended that way."""
    if launcher not in (TuningStudy.Launcher.LOCAL, TuningStudy.Launcher.RAY_JOB):
        raise ValueError(f"launcher must be local or ray, got {launcher!r}")
    updated = TuningStudy.objects.filter(
        pk=study_id, status__in=(StudyStatus.KILLED, StudyStatus.FAILED),
    ).update(status=StudyStatus.PENDING, launcher=launcher, process_id=None,
             process_start="", cancel_requested_at=None, error="", ended_at=None)
    return bool(updated)


def study_request_cancel(*, study_id: int) -> bool:
    """Note that the user asked to stop the study. False when it already ended. A second
    request keeps the first one's time, from which the grace time before escalation runs."""
    active = TuningStudy.objects.filter(pk=study_id, status__in=ACTIVE_STATUSES)
    active.filter(cancel_requested_at=None).update(cancel_requested_at=django_timezone.now())
    return active.exists()


def study_cancel_pending(*, study_id: int) -> bool:
    """Whether the study is still active and its stop was asked for: its driver polls
    this, so that a cancel whose signal it never got still stops it."""
    return TuningStudy.objects.filter(pk=study_id, status__in=ACTIVE_STATUSES).exclude(
        cancel_requested_at=None).exists()


def study_mark_ended(*, study_id: int, status: str, error: str = "") -> bool:
    """End a study whose driver is gone without saying so (killed, crashed, or failed
    before it recorded its start). Trials still marked running end KILLED. False when
    the study had already ended: the driver's own record wins."""
    if status not in (StudyStatus.FAILED, StudyStatus.KILLED, StudyStatus.COMPLETED):
        raise ValueError(f"status must be failed, killed or completed, got {status!r}")
    now = django_timezone.now()
    with transaction.atomic():
        updated = TuningStudy.objects.filter(pk=study_id, status__in=ACTIVE_STATUSES).update(
            status=status, error=error, ended_at=now)
        if updated:
            TuningTrial.objects.filter(study_id=study_id, state=TrialState.RUNNING).update(
                state=TrialState.KILLED, ended_at=now,
                error="the study's driver ended before the trial finished")
    return bool(updated)
