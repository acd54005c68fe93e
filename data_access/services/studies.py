"""Studies and trials as their driver records them (data_access.recorder calls these):
a study's start, each trial's start, results and end, the study's end."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.db import transaction

from data_access.db import database_description
from data_access.models import TuningParamConfig, TuningStudy, TuningTrial
from data_access.services._values import aware, finite_or_none, json_safe
from data_access.services.themes import require_theme
from tuning.errors import StudyNotFoundError
from tuning.redact import redact_url
from tuning.states import ACTIVE_STATUSES, StudyStatus, TrialState
from tuning.tracking.recording import (
    StudyEnd,
    StudyEvaluation,
    StudyStart,
    TrialEnd,
    TrialResult,
    TrialStart,
)


def study_create(*, theme_id: int, event: StudyStart) -> TuningStudy:
    """A running study and one TuningParamConfig row per searched parameter."""
    configs = _param_configs(event)
    with transaction.atomic():
        require_theme(theme_id)
        study = TuningStudy.objects.create(**{**_start_fields(event), "theme_id": theme_id})
        for config in configs:
            config.study = study
        TuningParamConfig.objects.bulk_create(configs)
    return study


def study_start_existing(*, study_id: int, event: StudyStart, driver_pid: int | None = None,
                         driver_start: str = "") -> TuningStudy:
    """Fill in an existing row (made by the web UI before it launched the study, or a
    study being resumed) as study_create would have made it. Raises StudyNotFoundError
    when the row is gone.

    The row then follows the driver that records into it: its Ray job, or else (for a
    study the web UI launched) its process, so that the UI watches and stops the right
    one; an end noted for an earlier driver no longer applies, nor does a cancel of an
    ended row. A cancel of the still active row is kept: it was asked of this driver,
    which then stops (tuning.recovery.interrupts.CancelWatch)."""
    configs = _param_configs(event)
    with transaction.atomic():
        study = TuningStudy.objects.select_for_update().filter(pk=study_id).first()
        if study is None:
            raise StudyNotFoundError(
                f"Study {study_id} not found in database {database_description()}.",
                fix="launch without --record-id, or create the study in the web UI.")
        require_theme(event.theme_id)
        fields = _start_fields(event)
        if fields["ray_job_id"]:
            fields["launcher"] = TuningStudy.Launcher.RAY_JOB
        else:
            # The launcher's Ray job id is kept when the driver does not know its own.
            fields.pop("ray_job_id")
            if study.launcher and driver_pid is not None:
                fields.update(launcher=TuningStudy.Launcher.LOCAL, process_id=driver_pid,
                              process_start=driver_start)
        if study.status not in ACTIVE_STATUSES:
            fields["cancel_requested_at"] = None
        fields.update(error="", ended_at=None)
        for name, value in fields.items():
            setattr(study, name, value)
        study.save()
        study.param_configs.all().delete()
        for config in configs:
            config.study = study
        TuningParamConfig.objects.bulk_create(configs)
    return study


def study_finish(*, study_id: int, event: StudyEnd) -> None:
    if event.status not in TuningStudy.Status.values:
        raise ValueError(f"StudyEnd.status must be one of {TuningStudy.Status.values}, "
                         f"got {event.status!r}")
    TuningStudy.objects.filter(pk=study_id).update(
        status=event.status,
        best_value=finite_or_none(event.best_value),
        best_params=json_safe(event.best_params),
        best_trial_number=event.best_trial_number,
        registered_model=event.registered_model or "",
        registered_version=event.registered_version or "",
        error=event.error or "",
        ended_at=aware(event.ended_at),
    )


def study_set_evaluation(*, study_id: int, event: StudyEvaluation) -> None:
    TuningStudy.objects.filter(pk=study_id).update(evaluation=json_safe(asdict(event)))


def trial_start(*, study_id: int, event: TrialStart) -> TuningTrial:
    # A trial that Ray restarts is started again under the same number.
    return _trial_set(
        study_id, event.number, state=TrialState.RUNNING, params=json_safe(event.params),
        mlflow_run_id=event.mlflow_run_id or "", ray_trial_id=event.ray_trial_id or "",
        started_at=aware(event.started_at), ended_at=None, error="")


def trial_add_result(*, study_id: int, event: TrialResult) -> None:
    """Append one epoch's metrics. A report for an epoch at or before the last one
    recorded (the trial was restarted) replaces the entries from that epoch on."""
    entry = {"epoch": event.epoch}
    entry.update(
        (key, json_safe(value)) for key, value in event.metrics.items() if key != "epoch"
    )
    with transaction.atomic():
        trial, _ = TuningTrial.objects.select_for_update().get_or_create(
            study_id=study_id, number=event.number,
        )
        kept = [m for m in trial.metrics if m.get("epoch", -1) < event.epoch]
        trial.metrics = [*kept, entry]
        fields = ["metrics"]
        if event.node:
            trial.node = event.node
            fields.append("node")
        trial.save(update_fields=fields)


def trial_finish(*, study_id: int, event: TrialEnd) -> None:
    if event.state not in TuningTrial.State.values:
        raise ValueError(f"TrialEnd.state must be one of {TuningTrial.State.values}, "
                         f"got {event.state!r}")
    _trial_set(study_id, event.number, state=event.state, value=finite_or_none(event.value),
               error=event.error or "", ended_at=aware(event.ended_at))


def _trial_set(study_id: int, number: int, **fields: Any) -> TuningTrial:
    """The trial's row with these fields, created when the study has none by its number."""
    trial, _ = TuningTrial.objects.update_or_create(study_id=study_id, number=number,
                                                    defaults=fields)
    return trial


def _param_configs(event: StudyStart) -> list[TuningParamConfig]:
    configs = []
    for param_name, spec in event.param_space.items():
        param_type = spec.get("type")
        if param_type not in TuningParamConfig.Type.values:
            raise ValueError(f"param_space[{param_name!r}]['type'] must be one of "
                             f"{TuningParamConfig.Type.values}, got {param_type!r}")
        configs.append(TuningParamConfig(
            name=param_name,
            type=param_type,
            low=finite_or_none(spec.get("low")),
            high=finite_or_none(spec.get("high")),
            log=bool(spec.get("log", False)),
            step=finite_or_none(spec.get("step")),
            choices=json_safe(spec.get("choices")),
        ))
    return configs


def _start_fields(event: StudyStart) -> dict[str, Any]:
    """The study row's columns that a StudyStart sets."""
    return dict(
        theme_id=event.theme_id,
        name=event.name,
        status=StudyStatus.RUNNING,
        direction=event.direction,
        metric=event.metric,
        n_trials=event.n_trials,
        resolved_config=json_safe(event.resolved_config),
        optuna_study_name=event.optuna_study_name,
        # Shown in the admin and web UI: no password.
        optuna_storage=redact_url(event.optuna_storage) or "",
        mlflow_experiment_id=event.mlflow_experiment_id or "",
        mlflow_parent_run_id=event.mlflow_parent_run_id or "",
        ray_job_id=event.ray_job_id or "",
        experiment_path=event.experiment_path or "",
        theme_content_hash=event.theme_content_hash or "",
        warm_start=json_safe(event.warm_start),
        started_at=aware(event.started_at),
    )
