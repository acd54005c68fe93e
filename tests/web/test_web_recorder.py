"""DjangoStudyRecorder(study_id=N): launch.py --record-id N fills in the web UI's
pending row instead of creating a second one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_access import services
from data_access.models import TuningParamConfig, TuningStudy
from data_access.recorder import DjangoStudyRecorder
from tuning.tracking.recording import StudyEnd, StudyStart, TrialEnd, TrialStart

pytestmark = pytest.mark.django_db


def start_event(theme_id: int, **changes) -> StudyStart:
    values = dict(theme_id=theme_id, name="run", direction="minimize", metric="valid_loss",
                  n_trials=3, optuna_study_name="s", optuna_storage="sqlite:///o.db",
                  mlflow_experiment_id="4", mlflow_parent_run_id="parent",
                  resolved_config={"a": 1},
                  param_space={"training.batch_size": {"type": "int", "low": 8, "high": 32,
                                                       "step": 8}})
    values.update(changes)
    return StudyStart(**values)


def pending(theme, **changes):
    values = dict(theme_id=theme.id, name="planned", optuna_study_name="s",
                  direction="maximize", metric="test_acc", n_trials=2,
                  resolved_config={}, launcher="local")
    values.update(changes)
    return services.study_create_pending(**values)


def test_study_started_fills_in_the_pending_row(theme):
    row = pending(theme)
    services.study_set_launched(study_id=row.id, process_id=1234, process_start="99")
    recorder = DjangoStudyRecorder(study_id=row.id)
    recorder.study_started(start_event(theme.id))
    recorder.trial_started(TrialStart(number=0, ray_trial_id="t0",
                                      params={"training.batch_size": 16}, mlflow_run_id="r0"))
    recorder.trial_finished(TrialEnd(number=0, state="COMPLETE", value=0.3))
    recorder.study_finished(StudyEnd(status="completed", best_value=0.3,
                                     best_params={"training.batch_size": 16},
                                     best_trial_number=0))

    assert TuningStudy.objects.count() == 1
    study = TuningStudy.objects.get()
    assert recorder.study_id == row.id
    assert study.status == "completed" and study.best_value == 0.3
    assert (study.direction, study.metric, study.n_trials) == ("minimize", "valid_loss", 3)
    assert study.mlflow_parent_run_id == "parent" and study.started_at is not None
    # The row follows the driver that records into it: its own pid from now on.
    assert study.launcher == "local" and study.process_id == os.getpid()
    assert study.process_start == Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert list(TuningParamConfig.objects.values_list("name", "step")) == [
        ("training.batch_size", 8.0)]
    assert study.trials.get().value == 0.3


def test_the_launchers_ray_job_id_is_kept_when_the_driver_has_none(theme):
    row = pending(theme, launcher="ray")
    services.study_set_launched(study_id=row.id, ray_job_id="themetune-study-1")
    DjangoStudyRecorder(study_id=row.id).study_started(start_event(theme.id, ray_job_id=None))
    assert TuningStudy.objects.get().ray_job_id == "themetune-study-1"


def test_without_study_id_a_new_row_is_created(theme):
    row = pending(theme)
    recorder = DjangoStudyRecorder()
    recorder.study_started(start_event(theme.id))
    assert recorder.study_id != row.id and TuningStudy.objects.count() == 2


def test_a_missing_row_is_a_user_error(theme):
    from tuning.errors import StudyNotFoundError

    with pytest.raises(StudyNotFoundError, match="Study 999 not found"):
        DjangoStudyRecorder(study_id=999).study_started(start_event(theme.id))


def test_mark_ended_never_overwrites_the_drivers_own_end(theme):
    row = pending(theme)
    recorder = DjangoStudyRecorder(study_id=row.id)
    recorder.study_started(start_event(theme.id))
    recorder.study_finished(StudyEnd(status="completed", best_value=1.0, best_params={},
                                     best_trial_number=0))
    assert services.study_mark_ended(study_id=row.id, status="failed", error="x") is False
    assert TuningStudy.objects.get().status == "completed"


def test_a_resumed_study_drops_the_earlier_drivers_cancel_and_end(theme):
    row = pending(theme)
    services.study_set_launched(study_id=row.id, process_id=1, process_start="1")
    services.study_request_cancel(study_id=row.id)
    services.study_mark_ended(study_id=row.id, status="killed", error="cancelled")
    DjangoStudyRecorder(study_id=row.id).study_started(start_event(theme.id))
    study = TuningStudy.objects.get()
    assert study.status == "running" and study.cancel_requested_at is None
    assert study.error == "" and study.ended_at is None and study.process_id == os.getpid()


def test_a_driver_inside_a_ray_job_makes_the_row_follow_that_job(theme):
    row = pending(theme)
    DjangoStudyRecorder(study_id=row.id).study_started(
        start_event(theme.id, ray_job_id="raysubmit_9"))
    study = TuningStudy.objects.get()
    assert (study.launcher, study.ray_job_id) == ("ray", "raysubmit_9")


def test_a_cli_study_keeps_no_launcher(theme):
    recorder = DjangoStudyRecorder()
    recorder.study_started(start_event(theme.id))
    DjangoStudyRecorder(study_id=recorder.study_id).study_started(start_event(theme.id))
    study = TuningStudy.objects.get()
    assert study.launcher == "" and study.process_id is None
