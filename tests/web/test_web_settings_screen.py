"""The tuning settings screen: the search space as rows of a formset, checked by the
CLI's own rules; the common fixed parameters as fields and the rest as YAML; files and
form round-trip; prefills from the chosen theme; the same read-only space table on the
study and theme pages; a browser adding, editing and removing rows in both languages."""

from __future__ import annotations

import re
import time
from html import unescape
from pathlib import Path

import pytest
import yaml
from django.urls import reverse

from data_access import selectors
from data_access.models import TuningStudy
from tests.web.conftest import (
    PASSWORD,
    SCREENSHOTS,
    cli_error,
    form_data,
    row_error,
    tiny_config_files,
)
from tests.web.test_web_browser import browser_page  # noqa: F401  (a fixture)
from tuning.config import ConfigFiles, load_study_config
from tuning.config.params import tunable_keys
from web import forms, launch, study_configs
from web.launch import local

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def preset(settings):
    return study_configs.presets(Path(settings.THEMETUNE_CONFIGS_DIR))[0]


@pytest.fixture
def values(theme, preset):
    values = study_configs.initial_values(preset, class_count=4, theme_name=theme.name)
    values.update(theme=str(theme.id), preset=preset.name)
    return values


def post(client, user, data):
    client.force_login(user)
    return client.post(reverse("study_new"), data)


# ---------------------------------------------------------------- files <-> form


@pytest.mark.django_db
def test_form_files_form_round_trip(values, theme, tmp_path):
    """The form's values become files that read back as the same values and write the
    same files again: the row view, the field view and the YAML view lose nothing."""
    values["space_rows"].append(study_configs.new_row("model.pretrained"))
    values["space_rows"].append({**study_configs.new_row("training.batch_size"),
                                 "low": "8", "high": "32", "step": "8"})
    values["space_rows"].append({**study_configs.new_row("model.name"),
                                 "choices": "ResNet18, ResNet50"})
    values.update(num_epochs="2", equalization=True, split_train="0.6", split_valid="0.2",
                  split_test="0.2")
    files = study_configs.build(values, theme_id=theme.id)
    folder = tmp_path / "written"
    files.write(folder)
    again = study_configs.initial_values(study_configs.Preset("written", folder))
    again.update(theme=values["theme"], preset=values["preset"])
    # As typed, but for the comma list, which reads back one choice per line.
    values["space_rows"][-1]["choices"] = "ResNet18\nResNet50"
    assert again == values
    assert study_configs.build(again, theme_id=theme.id).texts == files.texts
    # The files alone, without --theme-id, are the same study.
    alone = load_study_config(ConfigFiles.in_folder(folder))
    assert alone.resolved() == files.config.resolved() and alone.theme_id == theme.id
    assert alone.space["model.pretrained"].choices == [True, False]
    assert alone.space["training.batch_size"].step == 8
    assert alone.space["model.name"].choices == ["ResNet18", "ResNet50"]
    assert alone.params.training.num_epochs == 2
    assert alone.params.preprocessing.brightness_correction.enabled is True


def test_choices_are_a_list_not_yaml():
    text = 'Adam, SGD\n"a, b"\n2\n0.5\ntrue\nnull\n"3"\n'
    choices = study_configs.parse_choices(text)
    assert choices == ["Adam", "SGD", "a, b", 2, 0.5, True, None, "3"]
    assert study_configs.parse_choices(study_configs.format_choices(choices)) == choices


def test_every_tunable_key_is_described_and_translatable():
    keys = tunable_keys()
    assert {k.name for k in keys} >= {"model.name", "training.optimizer", "training.batch_size",
                                      "model.pretrained", "model.freeze_backbone",
                                      "preprocessing.patch.enabled"}
    assert set(forms.KEY_DESCRIPTIONS) == {k.description for k in keys}
    by_name = {k.name: k.accepts for k in keys}
    assert by_name["model.name"].choices == ("ResNet18", "ResNet50", "ResNet101")
    assert by_name["training.optimizer"].choices == ("Adam", "SGD", "AdamW")
    assert (by_name["training.batch_size"].low, by_name["training.batch_size"].high) == (1, 65536)
    assert forms.accepts_text(by_name["training.batch_size"]) == "integer 1 ≤ x ≤ 65536"


# ---------------------------------------------------------------- each row, as the CLI


@pytest.mark.django_db
@pytest.mark.parametrize("row, change, expected", [
    (0, lambda rows: rows[0].update(low="0.1", high="0.01"),
     "optuna_params.yaml: key 'params_to_tune.training.learning_rate': `low` must be <= "
     "`high` (low=0.1, high=0.01)."),
    (0, lambda rows: rows[0].update(low="0"),
     "optuna_params.yaml: key 'params_to_tune.training.learning_rate': `low` must be > 0 "
     "when `log` is true (low=0.0)."),
    (0, lambda rows: rows[0].update(name="training.learning_rat"),
     "optuna_params.yaml: key 'params_to_tune.training.learning_rat': is not a parameter "
     "the trainable uses."),
    (1, lambda rows: rows[1].update(choices=" \n"),
     "optuna_params.yaml: key 'params_to_tune.training.optimizer.choices': List should "
     "have at least 1 item after validation, not 0"),
    (1, lambda rows: rows[1].update(choices="Adam, Adagrad"),
     "optuna_params.yaml: key 'params_to_tune.training.optimizer.choices': value 'Adagrad' "
     "is not valid for training.optimizer"),
])
def test_each_row_is_checked_as_the_cli_checks_it(client, tuner, theme, values, tmp_path,
                                                  row, change, expected):
    change(values["space_rows"])
    response = post(client, tuner, form_data(values))
    assert response.status_code == 200
    shown = row_error(response, row)
    assert shown.startswith(expected), shown
    assert shown == cli_error(values, theme.id, tmp_path)
    assert not TuningStudy.objects.exists()


@pytest.mark.django_db
def test_every_bad_row_is_marked_at_once_and_a_repeated_key_is_named(client, tuner, values):
    rows = values["space_rows"]
    rows[0].update(low="0.1", high="0.01")
    rows.append(study_configs.new_row("training.optimizer"))
    response = post(client, tuner, form_data(values))
    assert response.status_code == 200
    assert "`low` must be <= `high`" in row_error(response, 0)
    assert row_error(response, 2) == (
        "optuna_params.yaml: key 'params_to_tune.training.optimizer': the same key appears "
        "twice in one mapping (rows 2 and 3). Fix: keep one of them: the later one would "
        "silently win.")
    assert "The settings have a problem" in response.content.decode()
    assert not TuningStudy.objects.exists()


@pytest.mark.django_db
def test_removed_rows_are_left_out_and_an_empty_space_is_the_clis_error(client, tuner, values):
    data = form_data(values)
    data.update({"params-0-DELETE": "on", "params-1-DELETE": "on"})
    response = post(client, tuner, data)
    assert response.status_code == 200
    shown = re.search(r'id="space-errors">(.*?)</div>', response.content.decode(), re.S)
    assert shown and unescape(shown.group(1)).startswith(
        "optuna_params.yaml: key 'params_to_tune': no parameters to tune.")
    assert not TuningStudy.objects.exists()


@pytest.mark.django_db
def test_add_row_without_js_shows_the_keys_row_and_drops_removed_ones(client, tuner, values):
    data = form_data(values)
    data.update({"params-1-DELETE": "on", "add_row": "1", "add_param": "model.freeze_backbone",
                 "num_epochs": "7"})
    response = post(client, tuner, data)
    assert response.status_code == 200
    page = response.content.decode()
    assert not TuningStudy.objects.exists()
    assert 'name="params-TOTAL_FORMS" value="3"' in page      # 2 rows + an empty one
    assert 'value="training.optimizer" selected' not in page
    assert 'name="params-1-name"' in page and 'value="model.freeze_backbone" selected' in page
    assert "true\nfalse</textarea>" in page
    assert 'name="num_epochs" value="7"' in page                 # the rest kept as typed
    assert "fielderror" not in page                              # nothing checked yet


# ---------------------------------------------------------------- prefills and pages


@pytest.mark.django_db
def test_prefills_come_from_the_chosen_theme_only(client, tuner, theme, settings):
    other = Path(settings.THEMETUNE_CONFIGS_DIR) / "other"
    tiny_config_files(other, base={"model": {"name": "ResNet18", "num_classes": 10},
                                   "training": {"num_epochs": 1}},
                      params={"data": {"theme_id": 7, "image_size": 16},
                              "training": {"run_name": "my_tuning_experiment"}})
    type(theme).objects.filter(pk=theme.pk).update(
        default_params={"training": {"learning_rate": 0.005}}, default_params_study_id=None)
    client.force_login(tuner)
    page = client.get(reverse("study_new"), {"theme": theme.id, "preset": "other"}
                      ).content.decode()
    assert "theme_id" not in page and "my_tuning_experiment" not in page
    assert "num_classes: 4" in page                     # the theme's class count
    assert "learning_rate: 0.005" in page               # its saved defaults
    assert f"run_name: {theme.name}_tuning" in page
    assert 'name="image_size" value="16"' in page


@pytest.mark.django_db
def test_help_texts_are_in_japanese_too(client, tuner, theme):
    client.force_login(tuner)
    page = client.get(reverse("study_new"), {"theme": theme.id},
                      HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert 'lang="ja"' in page
    for english in ("Optimizer step size.", "Add row", "Fixed parameters", "integer 1"):
        assert english not in page, english


@pytest.mark.django_db
def test_study_and_theme_pages_show_the_same_space_table(client, tuner, theme, make_study):
    client.force_login(tuner)
    theme_page = client.get(reverse("theme_detail", args=[theme.id])).content.decode()
    # No study yet: the default space of configs/ (the tiny one in tests).
    assert "No study of this theme yet" in theme_page
    assert "<code>training.optimizer</code>" in theme_page and "Adam, AdamW" in theme_page
    study_id = make_study(theme)
    study_page = client.get(reverse("study_detail", args=[study_id])).content.decode()
    theme_page = client.get(reverse("theme_detail", args=[theme.id])).content.decode()

    def table(page):
        return re.search(r'<table class="table compact search-space".*?</table>', page,
                         re.S).group(0)
    assert table(study_page) == table(theme_page)
    assert f"study {study_id}" in theme_page and "[0.001, 0.01] log" in table(theme_page)


# ---------------------------------------------------------------- a launch from the form

# Started by the local launcher as launch.py would be: it reads the files written for the
# study as launch.py reads them, without --theme-id (the files alone name the study), and
# prints the search space as the dry run does. (Real launches: test_web_browser.py.)
FILES_ALONE = """
import sys
from pathlib import Path
from tuning.config import ConfigFiles, load_study_config
from tuning.config.search_space import format_space
args = sys.argv[1:]
config = load_study_config(ConfigFiles.in_folder(Path(args[args.index("--configs") + 1])))
print(f"theme {config.theme_id}: {config.study.n_trials} trials, run {config.run_name}")
print("\\n".join(format_space(config.space)))
print("files read")
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_launch_from_the_form_runs_the_files_it_wrote(client, tuner, theme, values,
                                                      settings, tmp_path):
    script = tmp_path / "files_alone.py"
    script.write_text(FILES_ALONE)
    settings.THEMETUNE_LAUNCH_SCRIPT = str(script)
    values["space_rows"].append({**study_configs.new_row("training.batch_size"),
                                 "type": "categorical", "choices": "8, 16"})
    response = post(client, tuner, form_data(values))
    study = TuningStudy.objects.get()
    assert response.status_code == 302 and study.launcher == "local"
    deadline = time.monotonic() + 60
    try:
        while "files read" not in (launch.log_tail(selectors.study_get(study_id=study.id)) or ""):
            info = launch.refresh_study(selectors.study_get(study_id=study.id))
            assert info.is_active or "files read" in (launch.log_tail(info) or ""), \
                launch.log_tail(info)
            assert time.monotonic() < deadline, launch.log_tail(info)
            time.sleep(0.5)
    finally:
        ref = TuningStudy.objects.get(pk=study.id)
        if ref.process_id:
            local.kill_group(local.ProcessRef(ref.process_id, ref.process_start), 9)
    log = launch.log_tail(selectors.study_get(study_id=study.id))
    configs = Path(study.run_dir) / "configs"
    assert f"--configs {configs} --theme-id {theme.id}" in log.splitlines()[0]
    assert f"theme {theme.id}: 2 trials, run {theme.name}_tuning" in log
    assert "  training.batch_size: categorical [8, 16]" in log
    assert "  training.learning_rate: float [0.001, 0.01] log" in log
    written = yaml.safe_load((configs / "params.yaml").read_text())
    assert written["data"]["theme_id"] == theme.id


# ---------------------------------------------------------------- in a browser

def _rows_in_browser(page, url: str, *, language: str) -> None:
    """Add a row with the key list, edit one, remove one; the page then shows the
    server's checks beside the edited row and keeps the others as they were."""
    page.goto(f"{url}/studies/new/")
    page.wait_for_selector("#param-rows")
    assert page.locator("[data-param-row]:visible").count() == 3       # 2 + the empty one
    assert page.is_hidden("#row-params-0 [data-shows='choices']")      # float: a range
    page.select_option("#add-param", "model.freeze_backbone")
    page.click("#add-row")
    assert page.locator("[data-param-row]:visible").count() == 4
    assert page.input_value("#id_params-3-type") == "categorical"
    assert page.input_value("#id_params-3-choices") == "true\nfalse"
    assert page.is_hidden("#row-params-3 [data-shows='range']")
    help_text = page.text_content("#row-params-3 [data-key-help]")
    assert ("backbone" in help_text) == (language == "en"), help_text
    page.fill("#id_params-0-high", "0.00001")                          # below low
    page.click("#row-params-1 [data-remove-row]")
    assert page.locator("[data-param-row]:visible").count() == 3
    page.select_option("#id_params-2-name", "training.momentum")       # the empty row
    page.select_option("#id_params-2-type", "float")
    page.fill("#id_params-2-low", "0.5")
    page.fill("#id_params-2-high", "0.9")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"settings-rows-{language}.png"), full_page=True)
    page.click("#launch")
    page.wait_for_selector("#row-params-0 .row-error")
    assert "`low` must be <= `high`" in page.text_content("#row-params-0 .row-error")
    assert page.is_hidden("#row-params-1")                             # still removed
    assert page.input_value("#id_params-2-name") == "training.momentum"
    assert page.input_value("#id_params-3-name") == "model.freeze_backbone"
    page.screenshot(path=str(SCREENSHOTS / f"settings-rows-error-{language}.png"),
                    full_page=True)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_rows_are_added_edited_and_removed_in_a_browser(browser_page, live_server,  # noqa: F811
                                                       tuner, theme):
    page = browser_page
    url = live_server.url
    page.goto(url + "/login/")
    page.fill("#id_username", tuner.username)
    page.fill("#id_password", PASSWORD)
    page.click("#login")
    page.wait_for_url(url + "/studies/")
    _rows_in_browser(page, url, language="en")
    with page.expect_navigation():
        page.select_option("#language", "ja")
    _rows_in_browser(page, url, language="ja")
    assert "探索空間" in page.text_content("main")
    assert not TuningStudy.objects.exists()
    assert page.js_errors == [], page.js_errors
    assert page.csp_violations == [], page.csp_violations
