"""The pages render what the records hold: themes, studies, trials, plots, best params."""

from __future__ import annotations

import json

import pytest
import yaml
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_tuner(client, tuner):
    client.force_login(tuner)
    return client


def test_theme_list_and_page_show_counts_and_thumbnails(client_tuner, theme):
    page = client_tuner.get(reverse("theme_list")).content.decode()
    assert "digits4" in page and ">80<" in page and ">4<" in page

    page = client_tuner.get(reverse("theme_detail", args=[theme.id])).content.decode()
    assert page.count('class="classhead"') == 4
    image = theme.images.first()
    url = reverse("theme_image", args=[theme.id, image.id])
    assert url in page
    response = client_tuner.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")


def test_study_page_shows_progress_trials_and_best(client_tuner, theme, make_study):
    study_id = make_study(theme)
    page = client_tuner.get(reverse("study_detail", args=[study_id])).content.decode()
    assert 'aria-valuenow="100"' in page
    assert 'id="trial-table"' in page and page.count('class="badge complete"') == 3
    assert 'id="best-value">0.7500<' in page
    assert "training.learning_rate" in page
    # Links to the MLflow UI: the parent run and each trial's run.
    assert "/#/experiments/1/runs/p1" in page and "/#/experiments/1/runs/run2" in page

    live = client_tuner.get(reverse("study_live", args=[study_id]))
    assert live["X-Study-Active"] == "0"
    assert 'id="progress"' in live.content.decode()


def test_running_study_estimates_the_time_left(client_tuner, theme, make_study):
    study_id = make_study(theme, values=(0.5,), finish=False)
    live = client_tuner.get(reverse("study_live", args=[study_id]))
    assert live["X-Study-Active"] == "1"
    text = live.content.decode()
    assert "1 of 2 trials done" in text and 'aria-valuenow="50"' in text
    assert "Estimated time left" in text


@pytest.mark.parametrize("kind", ["history", "importance", "parallel", "slice"])
def test_every_plot_is_an_optuna_figure(client_tuner, theme, make_study, kind):
    study_id = make_study(theme)
    page = client_tuner.get(reverse("study_plot", args=[study_id, kind])).content.decode()
    assert "web/vendor/plotly.min.js" in page
    data = json.loads(client_tuner.get(reverse("study_plot_data", args=[study_id, kind])).content)
    assert data["active"] is False
    assert data["figure"]["data"], data
    assert data["figure"]["layout"]["title"]["text"]


def test_importance_waits_for_two_finished_trials(client_tuner, theme, make_study):
    study_id = make_study(theme, values=(0.5,), finish=False)
    data = json.loads(client_tuner.get(
        reverse("study_plot_data", args=[study_id, "importance"])).content)
    assert "figure" not in data and "at least 2" in data["message"]
    history = json.loads(client_tuner.get(
        reverse("study_plot_data", args=[study_id, "history"])).content)
    assert history["figure"]["data"]


def test_plotly_js_is_served_locally(client_tuner):
    from django.contrib.staticfiles import finders

    path = finders.find("web/vendor/plotly.min.js")
    assert path and path.endswith("plotly.min.js")


def test_best_params_download_and_apply_as_theme_defaults(client_tuner, theme, make_study):
    study_id = make_study(theme)
    response = client_tuner.get(reverse("best_params_download", args=[study_id]))
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    params = yaml.safe_load(response.content)
    assert params["training"]["learning_rate"] == pytest.approx(0.002)
    assert params["training"]["optimizer"] == "AdamW"
    assert params["data"]["image_size"] == 16

    response = client_tuner.post(reverse("best_params_apply", args=[study_id]))
    assert response.status_code == 302
    theme.refresh_from_db()
    assert theme.default_params == {"training": {"learning_rate": 0.002, "optimizer": "AdamW"}}
    assert theme.default_params_study_id == study_id
    # The next study of the theme starts from them.
    page = client_tuner.get(reverse("study_new") + f"?theme={theme.id}").content.decode()
    assert "learning_rate: 0.002" in page and "optimizer: AdamW" in page
    assert "saved defaults" in page


def test_new_study_form_is_prefilled_from_the_config_folder(client_tuner, theme):
    page = client_tuner.get(reverse("study_new") + f"?theme={theme.id}").content.decode()
    assert 'value="training.learning_rate" selected' in page    # a search space row
    assert 'value="2"' in page                          # n_trials of the tiny preset
    page = client_tuner.get(reverse("study_new") + f"?theme={theme.id}&preset=tiny2")
    assert 'value="3"' in page.content.decode()


def test_japanese(client_tuner, theme, make_study):
    study_id = make_study(theme)
    client_tuner.post(reverse("set_language"), {"language": "ja", "next": "/"})
    page = client_tuner.get(reverse("study_detail", args=[study_id])).content.decode()
    assert 'lang="ja"' in page
    assert "試行" in page and "完了" in page
    assert "Trials" not in page
