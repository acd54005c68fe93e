"""The new-study form: the CLI's config models judge it, and each error is shown next to
the field that holds the offending key, in the CLI's words."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest
import yaml
from django.urls import reverse

from data_access.models import TuningStudy
from tests.web.conftest import cli_error, form_data, row_error
from tuning.config import ConfigFiles, Overrides, load_study_config
from web import study_configs

pytestmark = pytest.mark.django_db


@pytest.fixture
def form_values(theme, settings):
    preset = study_configs.presets(Path(settings.THEMETUNE_CONFIGS_DIR))[0]
    values = study_configs.initial_values(preset, class_count=4)
    values.update(theme=str(theme.id), preset=preset.name)
    return values


def post(client, user, values):
    client.force_login(user)
    return client.post(reverse("study_new"), form_data(values))


def field_error(response, field: str) -> str:
    page = response.content.decode()
    match = re.search(rf'id="field-{field}".*?<div class="fielderror" role="alert">(.*?)</div>',
                      page, re.S)
    assert match, f"no error shown at field {field!r}"
    return unescape(match.group(1)).strip()


@pytest.mark.parametrize("field, change, expected", [
    ("row 0", lambda v: v["space_rows"][0].update(high="0.0001"),
     "optuna_params.yaml: key 'params_to_tune.training.learning_rate': `low` must be <= `high`"),
    ("n_trials", lambda v: v.update(n_trials="0"),
     "optuna_params.yaml: key 'study.n_trials': Input should be greater than or equal to 1"),
    ("base_params", lambda v: v.update(base_params=v["base_params"].replace(
        "\ntraining:\n", "\ntraining:\n  epochs: 3\n", 1)),
     "optuna_params.yaml: key 'base_params.training.epochs': unknown key."),
    ("image_size", lambda v: v.update(image_size="4"),
     "params.yaml: key 'data.image_size': Input should be greater than or equal to 8"),
    ("params", lambda v: v.update(params="training:\n  num_workers: -1\n"),
     "params.yaml: key 'training.num_workers': Input should be greater than or equal to 0"),
    ("config", lambda v: v.update(config=v["config"] + "mlfow: {}\n"),
     "config.yaml: key 'mlfow': unknown key."),
    ("cpu", lambda v: v.update(cpu="-1"),
     "config.yaml: key 'resources.cpu': Input should be greater than 0"),
    ("augments", lambda v: v.update(augments="horizontal_flip: 2\n"),
     "augments.yaml: key 'horizontal_flip': Input should be less than or equal to 1"),
])
def test_errors_are_the_clis_next_to_their_field(client, tuner, theme, form_values, tmp_path,
                                                  field, change, expected):
    change(form_values)
    response = post(client, tuner, form_values)
    assert response.status_code == 200
    shown = (row_error(response, int(field.split()[1])) if field.startswith("row ")
             else field_error(response, field))
    assert shown.startswith(expected), shown
    assert shown == cli_error(form_values, theme.id, tmp_path)
    assert not TuningStudy.objects.exists()


def test_yaml_syntax_error_names_the_line(client, tuner, form_values):
    form_values["base_params"] = "training:\n  run_name: x\n num_workers: 1\n"
    shown = field_error(post(client, tuner, form_values), "base_params")
    assert shown.startswith("YAML syntax error at line 3"), shown


def test_too_many_cpus_is_refused_as_the_cli_refuses_it(client, tuner, form_values):
    form_values["cpu"] = "512"
    shown = field_error(post(client, tuner, form_values), "cpu")
    assert "config.yaml: key 'resources.cpu': a trial asks for 512 CPUs" in shown


def test_valid_form_writes_the_files_launch_py_reads(client, tuner, theme, form_values,
                                                     settings, monkeypatch):
    started = []
    monkeypatch.setattr("web.launch.start._start_local",
                        lambda study_id, folder, args, **_: started.append((study_id, folder)))
    form_values.update(n_trials="5", study_name="web_study", scheduler="asha",
                       grace_period="1", max_concurrent_trials="1")
    response = post(client, tuner, form_values)
    study = TuningStudy.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("study_detail", args=[study.id])
    assert study.status == "pending" and study.launcher == "local"
    assert study.n_trials == 5 and study.optuna_study_name == "web_study"
    folder = Path(settings.THEMETUNE_RUNS_DIR) / f"study-{study.id}"
    assert started == [(study.id, folder)] and study.run_dir == str(folder)
    config = load_study_config(ConfigFiles.in_folder(folder / "configs"),
                               Overrides(theme_id=theme.id))
    assert config.study.n_trials == 5 and config.infra.scheduler.type == "asha"
    assert config.infra.max_concurrent_trials == 1
    # params.yaml: the YAML view's keys, the common fields' values and the chosen theme.
    written = yaml.safe_load((folder / "configs" / "params.yaml").read_text())
    assert written["training"]["run_name"] == yaml.safe_load(form_values["params"])[
        "training"]["run_name"]
    assert written["data"]["image_size"] == int(form_values["image_size"]) == 16
    assert written["data"]["theme_id"] == theme.id == config.theme_id


# ------------------------------------------------- hostile input: a form error, never a 500

# 9**6 values once expanded from 250 bytes: a 4 MB page when the form echoed its value.
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{new}: &{new} [{', '.join([f'*{old}'] * 9)}]\n" for old, new in zip("abcde", "bcdef"))


@pytest.fixture
def no_start(monkeypatch):
    """Had the form accepted the input, no study process may start from a test."""
    started = []
    monkeypatch.setattr("web.launch.start._start_local",
                        lambda study_id, folder, args, **_: started.append(study_id))
    return started


@pytest.mark.parametrize("field, value, expected", [
    ("n_trials", str(2**70), "optuna_params.yaml: key 'study.n_trials': Input should be less"),
    ("timeout", "1e999", "optuna_params.yaml: key 'study.timeout': Input should be a finite"),
    ("max_concurrent_trials", str(2**70),
     "config.yaml: key 'max_concurrent_trials': Input should be less"),
    ("grace_period", str(2**64), "config.yaml: key 'scheduler.grace_period': Input should be less"),
    ("n_trials", "9" * 5000, "Ensure this value has at most 40 characters"),
])
def test_out_of_range_numbers_are_form_errors(client, tuner, form_values, no_start,
                                              field, value, expected):
    form_values[field] = value
    response = post(client, tuner, form_values)
    assert response.status_code == 200
    assert field_error(response, field).startswith(expected)
    assert not TuningStudy.objects.exists() and not no_start


@pytest.mark.parametrize("field, text, expected", [
    ("base_params", "a: " + "[" * 10_000 + "]" * 10_000 + "\n", "nesting deeper than 50 levels"),
    ("config", ALIAS_BOMB, "expands to more than 10000 values"),
    ("params", "data:\n  seed: 1\n  seed: 2\n",
     "key 'seed': the same key appears twice in one mapping (lines 2 and 3)"),
])
def test_hostile_yaml_is_a_short_form_error(client, tuner, form_values, no_start,
                                            field, text, expected):
    form_values[field] = text
    response = post(client, tuner, form_values)
    assert response.status_code == 200
    shown = field_error(response, field)
    assert expected in shown and len(shown) < 600, shown
    # The page echoes the field as typed, and nothing expanded from it.
    assert len(response.content) < 200_000 + 2 * len(text)
    assert not TuningStudy.objects.exists() and not no_start


def test_new_study_page_with_an_absurd_theme_id_still_shows(client, tuner, theme):
    client.force_login(tuner)
    # More digits than Python's int() converts: a 500 when the view parsed it.
    response = client.get(reverse("study_new"), {"theme": "9" * 5000})
    assert response.status_code == 200
    assert not TuningStudy.objects.exists()


def test_theme_whose_name_mlflow_refuses_is_a_form_error(client, tuner, theme, form_values):
    # Imported before the name rule existed (or renamed by SQL): the rule is not in the DB.
    type(theme).objects.filter(pk=theme.pk).update(name="team/digits:v2")
    response = post(client, tuner, form_values)
    assert response.status_code == 200
    shown = field_error(response, "theme")
    assert shown.startswith("The theme name must not contain '/' ':'"), shown
    assert "rename the theme" in shown
    assert not TuningStudy.objects.exists()


def test_admin_refuses_a_theme_name_mlflow_refuses(admin_client, theme):
    from django.core.exceptions import ValidationError

    theme.name = "team/digits"
    with pytest.raises(ValidationError) as info:
        theme.full_clean()
    assert "must not contain '/'" in str(info.value)
    response = admin_client.post(reverse("admin:data_access_theme_change", args=[theme.id]),
                                 {"name": "a:b", "description": "", "default_params": "{}"})
    assert response.status_code == 200          # the form again, with the error
    assert "must not contain" in response.content.decode()
    theme.refresh_from_db()
    assert theme.name == "digits4"
