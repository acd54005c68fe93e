"""DjangoStudyRecorder writes a study's record and outlives database failures."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest
from django.db import connection

from data_access import selectors, services
from data_access.models import Theme, TuningParamConfig, TuningStudy, TuningTrial
from data_access.recorder import DjangoStudyRecorder
from tuning.tracking.recording import StudyEnd, StudyStart, TrialEnd, TrialResult, TrialStart

pytestmark = pytest.mark.django_db


@pytest.fixture
def theme() -> Theme:
    return Theme.objects.create(name="pets")


def study_start(theme_id: int, **changes) -> StudyStart:
    values = dict(
        theme_id=theme_id,
        name="optuna_tuning",
        direction="maximize",
        metric="test_acc",
        n_trials=2,
        optuna_study_name="pets_study",
        optuna_storage="postgresql://optuna:s3cret@db.local:5432/optuna",
        mlflow_experiment_id="1",
        mlflow_parent_run_id="parent123",
        resolved_config={"training": {"epochs": 2, "learning_rate": 0.01}},
        param_space={
            "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "training.batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
            "model.name": {"type": "categorical", "choices": ["resnet18", "resnet50"]},
        },
        ray_job_id="raysubmit_1",
    )
    values.update(changes)
    return StudyStart(**values)


def run_trial(recorder: DjangoStudyRecorder, number: int, accuracy: float) -> None:
    recorder.trial_started(TrialStart(number=number, ray_trial_id=f"t{number}",
                                      params={"training.learning_rate": 0.01},
                                      mlflow_run_id=f"run{number}"))
    for epoch in (1, 2):
        recorder.trial_result(TrialResult(number=number, epoch=epoch, node="node-a",
                                          metrics={"train_loss": 1.0 / epoch,
                                                   "valid_acc": accuracy}))
    recorder.trial_finished(TrialEnd(number=number, state="COMPLETE", value=accuracy))


def finish(recorder: DjangoStudyRecorder) -> None:
    recorder.study_finished(StudyEnd(status="completed", best_value=0.9,
                                     best_params={"training.learning_rate": 0.01},
                                     best_trial_number=1, registered_model="pets_model",
                                     registered_version="1"))


def test_a_whole_study_is_recorded(theme, capsys):
    recorder = DjangoStudyRecorder()
    recorder.study_started(study_start(theme.id))
    run_trial(recorder, 0, 0.8)
    run_trial(recorder, 1, 0.9)
    finish(recorder)

    study = TuningStudy.objects.get(pk=recorder.study_id)
    assert study.status == "completed"
    assert study.theme_id == theme.id
    assert study.best_value == 0.9 and study.best_trial_number == 1
    assert study.registered_model == "pets_model"
    assert study.started_at is not None and study.ended_at is not None
    assert study.optuna_storage == "postgresql://optuna:***@db.local:5432/optuna"
    assert study.resolved_config["training"]["epochs"] == 2
    configs = {c.name: c for c in TuningParamConfig.objects.filter(study=study)}
    assert configs["training.learning_rate"].log is True
    assert configs["training.batch_size"].step == 8
    assert configs["model.name"].choices == ["resnet18", "resnet50"]

    trials = selectors.trial_list(study_id=study.id)
    assert [(t.number, t.state, t.value, t.node) for t in trials] == [
        (0, "COMPLETE", 0.8, "node-a"), (1, "COMPLETE", 0.9, "node-a")]
    assert [m["epoch"] for m in trials[0].metrics] == [1, 2]
    assert trials[0].metrics[1] == {"epoch": 2, "train_loss": 0.5, "valid_acc": 0.8}
    assert trials[0].mlflow_run_id == "run0"

    info = selectors.study_get(study_id=study.id)
    assert info.trial_count == 2 and info.theme_name == "pets"
    assert [s.id for s in selectors.study_list_for_theme(theme_id=theme.id)] == [study.id]
    assert capsys.readouterr().err == ""


def test_restarted_trial_replaces_its_later_epochs_and_nan_becomes_null(theme):
    recorder = DjangoStudyRecorder()
    recorder.study_started(study_start(theme.id))
    recorder.trial_started(TrialStart(number=0, ray_trial_id="t0", params={},
                                      mlflow_run_id=None))
    for epoch in (1, 2, 3):
        recorder.trial_result(TrialResult(number=0, epoch=epoch, node=None,
                                          metrics={"valid_loss": float(epoch)}))
    # Ray restarted the trial from its epoch-1 checkpoint.
    recorder.trial_result(TrialResult(number=0, epoch=2, node="node-b",
                                      metrics={"valid_loss": math.nan}))
    recorder.trial_finished(TrialEnd(number=0, state="FAIL", value=math.nan, error="boom"))

    trial = TuningTrial.objects.get(study_id=recorder.study_id, number=0)
    assert trial.metrics == [{"epoch": 1, "valid_loss": 1.0}, {"epoch": 2, "valid_loss": None}]
    assert trial.node == "node-b"
    assert trial.state == "FAIL" and trial.value is None and trial.error == "boom"


def test_naive_event_times_are_stored_as_the_same_instant(theme):
    started = datetime(2026, 1, 2, 3, 4, 5)  # naive local time, as datetime.now() gives
    recorder = DjangoStudyRecorder()
    recorder.study_started(study_start(theme.id, started_at=started))

    study = TuningStudy.objects.get(pk=recorder.study_id)
    assert study.started_at == started.astimezone().astimezone(timezone.utc)


def _rename(table: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(table)} "
                       f"RENAME TO {connection.ops.quote_name(new)}")


TRIALS = TuningTrial._meta.db_table
STUDIES = TuningStudy._meta.db_table


def test_failed_writes_are_queued_and_retried_in_order(theme, capsys):
    recorder = DjangoStudyRecorder()
    recorder.study_started(study_start(theme.id))
    recorder.trial_started(TrialStart(number=0, ray_trial_id="t0", params={},
                                      mlflow_run_id="r0"))

    # A real failure: the table is gone while the study runs.
    _rename(TRIALS, "trials_away")
    try:
        for epoch in (1, 2):
            recorder.trial_result(TrialResult(number=0, epoch=epoch, node="n",
                                              metrics={"valid_acc": 0.5 + epoch / 10}))
        assert recorder.pending_count == 2
    finally:
        _rename("trials_away", TRIALS)

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("themetune: warning: database ")
    # Said once, when the first write failed; the second failure adds no line.
    assert "1 event(s) queued" in err[0]

    recorder.trial_finished(TrialEnd(number=0, state="COMPLETE", value=0.7))
    assert recorder.pending_count == 0
    finish(recorder)

    trial = TuningTrial.objects.get(study_id=recorder.study_id, number=0)
    assert [m["epoch"] for m in trial.metrics] == [1, 2]
    assert trial.state == "COMPLETE" and trial.value == 0.7
    assert TuningStudy.objects.get(pk=recorder.study_id).status == "completed"
    assert capsys.readouterr().err == ""


def test_study_row_written_late_when_the_database_comes_back(theme):
    recorder = DjangoStudyRecorder()
    _rename(STUDIES, "studies_away")
    try:
        recorder.study_started(study_start(theme.id))
        run_trial(recorder, 0, 0.8)
        assert recorder.study_id is None
        assert recorder.pending_count == 5
    finally:
        _rename("studies_away", STUDIES)

    finish(recorder)

    assert recorder.pending_count == 0
    study = TuningStudy.objects.get(pk=recorder.study_id)
    assert study.status == "completed"
    assert study.trials.get().metrics[-1]["epoch"] == 2


def test_events_still_unwritten_at_the_end_are_reported(theme, capsys):
    recorder = DjangoStudyRecorder()
    recorder.study_started(study_start(theme.id))
    run_trial(recorder, 0, 0.8)
    capsys.readouterr()

    _rename(TRIALS, "trials_away")
    try:
        run_trial(recorder, 1, 0.9)  # 4 events
        finish(recorder)             # 1 more
    finally:
        _rename("trials_away", TRIALS)

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[-1].startswith("themetune: warning: 5 study event(s) were not written to "
                              "database ")
    assert "no such table" in err[-1] or "does not exist" in err[-1]  # the last DB error
    assert TuningStudy.objects.get(pk=recorder.study_id).status == "running"


def test_param_space_with_an_unknown_type_is_a_programming_error(theme):
    bad = study_start(theme.id, param_space={"x": {"type": "uniform", "low": 0, "high": 1}})
    with pytest.raises(ValueError, match="must be one of"):
        services.study_create(theme_id=theme.id, event=bad)
    assert TuningStudy.objects.count() == 0
