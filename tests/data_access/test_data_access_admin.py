"""Every model has an admin, and its pages render for a superuser."""

from __future__ import annotations

import pytest
from django.urls import reverse

from data_access import services
from data_access.models import Theme, ThemeImage, TuningParamConfig, TuningStudy, TuningTrial
from data_access.recorder import DjangoStudyRecorder
from tuning.tracking.recording import StudyEnd, StudyStart, TrialEnd, TrialResult, TrialStart

pytestmark = pytest.mark.django_db

MODELS = [Theme, ThemeImage, TuningStudy, TuningTrial, TuningParamConfig]


@pytest.fixture
def recorded(image_tree):
    theme = services.theme_import_folder(directory=image_tree, name="pets")
    recorder = DjangoStudyRecorder()
    recorder.study_started(StudyStart(
        theme_id=theme.id, name="run", direction="maximize", metric="test_acc", n_trials=1,
        optuna_study_name="s", optuna_storage=None, mlflow_experiment_id="1",
        mlflow_parent_run_id="p", resolved_config={},
        param_space={"training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1}},
    ))
    recorder.trial_started(TrialStart(number=0, ray_trial_id="t0", params={"a": 1},
                                      mlflow_run_id="r0"))
    recorder.trial_result(TrialResult(number=0, epoch=1, metrics={"valid_acc": 0.5}, node="n"))
    recorder.trial_finished(TrialEnd(number=0, state="COMPLETE", value=0.5))
    recorder.study_finished(StudyEnd(status="completed", best_value=0.5, best_params={"a": 1},
                                     best_trial_number=0))
    return theme


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_pages_render(admin_client, recorded, model):
    opts = model._meta
    changelist = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert changelist.status_code == 200

    obj = model.objects.order_by("pk").first()
    change = admin_client.get(
        reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
    assert change.status_code == 200


def test_theme_changelist_shows_counts_and_image_thumbnails(admin_client, recorded):
    page = admin_client.get(reverse("admin:data_access_theme_changelist")).content.decode()
    assert "pets" in page
    images = admin_client.get(reverse("admin:data_access_themeimage_changelist"))
    assert f"/media/themes/{recorded.id}/cat/" in images.content.decode()


def test_admin_needs_a_login(client):
    response = client.get(reverse("admin:data_access_theme_changelist"))
    assert response.status_code == 302
