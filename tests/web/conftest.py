"""Django, users, a tiny theme and tiny configs for the web UI tests.

Like tests/data_access, Django is set up here at collection, so tests elsewhere stay free
of it. The test database is a file (web/settings.py sets DATABASES TEST NAME), so that a
study launched by a test, in a child process, writes to the same database that the test
and its live server read.
"""

from __future__ import annotations

import os
import re
import subprocess
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")

import django  # noqa: E402

django.setup()

from tests.conftest import tiny_config_files, write_digits_folder  # noqa: E402
from tuning.config import ConfigFiles, Overrides, load_study_config  # noqa: E402
from tuning.errors import ConfigError  # noqa: E402
from web import study_configs  # noqa: E402

SCREENSHOTS = ROOT / "test-output" / "screenshots"
PASSWORD = "tune-pass-123"


@pytest.fixture(autouse=True)
def web_settings(settings, tmp_path):
    """Each test gets its own media, runs and configs folders, and fast hashing."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.THEMETUNE_RUNS_DIR = str(tmp_path / "runs")
    settings.THEMETUNE_RAY_JOB_ADDRESS = ""
    settings.THEMETUNE_CANCEL_GRACE_S = 20
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The default config folder has comments a dump would lose; keep the real one.
    configs = tmp_path / "configs"
    tiny_config_files(configs, infra=tiny_infra(tmp_path))
    tiny_config_files(configs / "tiny2", n_trials=3, infra=tiny_infra(tmp_path))
    settings.THEMETUNE_CONFIGS_DIR = str(configs)
    return settings


def tiny_infra(folder: Path) -> dict:
    return {"mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "log_models": "none"},
            "ray": {"storage_path": str(folder / "ray_results"), "num_cpus": 2},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2,
            "cache_dir": str(folder / "cache")}


@pytest.fixture
def tuner(django_user_model):
    """A user who may launch and cancel studies."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("tuner", password=PASSWORD)
    user.user_permissions.add(*Permission.objects.filter(
        codename__in=("launch_study", "cancel_study")))
    return user


@pytest.fixture
def viewer(django_user_model):
    """A logged-in user without the launch and cancel permissions."""
    return django_user_model.objects.create_user("viewer", password=PASSWORD)


@pytest.fixture
def digits_dir(tmp_path_factory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=20, classes=4)


@pytest.fixture
def theme(db, digits_dir):
    from data_access import services

    return services.theme_import_folder(directory=digits_dir, name="digits4",
                                        description="4 classes of 8x8 digits")


@pytest.fixture
def make_study(db):
    """A study recorded as launch.py records one: rows written through the recorder."""
    from data_access.recorder import DjangoStudyRecorder
    from tuning.tracking.recording import StudyEnd, StudyStart, TrialEnd, TrialResult, TrialStart

    def make(theme, *, values=(0.5, 0.75, 0.6), finish=True, name="tiny_run"):
        recorder = DjangoStudyRecorder()
        recorder.study_started(StudyStart(
            theme_id=theme.id, name=name, direction="maximize", metric="test_acc",
            n_trials=len(values) + (0 if finish else 1), optuna_study_name="tiny",
            optuna_storage=None, mlflow_experiment_id="1", mlflow_parent_run_id="p1",
            resolved_config={"params": {"training": {"learning_rate": 0.001,
                                                     "optimizer": "Adam", "run_name": name},
                                        "data": {"image_size": 16}}},
            param_space={
                "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.01,
                                           "log": True},
                "training.optimizer": {"type": "categorical", "choices": ["Adam", "AdamW"]}}))
        for number, value in enumerate(values):
            params = {"training.learning_rate": 0.001 * (number + 1),
                      "training.optimizer": ["Adam", "AdamW"][number % 2]}
            recorder.trial_started(TrialStart(number=number, ray_trial_id=f"t{number}",
                                              params=params, mlflow_run_id=f"run{number}"))
            recorder.trial_result(TrialResult(number=number, epoch=1, node="node-a",
                                              metrics={"valid_acc": value}))
            recorder.trial_finished(TrialEnd(number=number, state="COMPLETE", value=value))
        if finish:
            best = max(range(len(values)), key=lambda i: values[i])
            recorder.study_finished(StudyEnd(
                status="completed", best_value=values[best], best_trial_number=best,
                best_params={"training.learning_rate": 0.001 * (best + 1),
                             "training.optimizer": ["Adam", "AdamW"][best % 2]}))
        return recorder.study_id

    return make


def form_data(values: dict) -> dict:
    """The new-study form's values (study_configs.initial_values) as the browser posts
    them: the search space rows as the `params` formset, checkboxes only when ticked."""
    data = {k: v for k, v in values.items()
            if k != "space_rows" and v is not False and v is not None}
    data = {k: ("on" if v is True else v) for k, v in data.items()}
    rows = values.get("space_rows", [])
    for index, row in enumerate(rows):
        for name, value in row.items():
            if value is True:
                data[f"params-{index}-{name}"] = "on"
            elif value is not False:
                data[f"params-{index}-{name}"] = value
    data.update({"params-TOTAL_FORMS": str(len(rows)), "params-INITIAL_FORMS": "0",
                 "params-MIN_NUM_FORMS": "0", "params-MAX_NUM_FORMS": "100"})
    return data


def chromium_path() -> str | None:
    """/usr/bin/chromium, installed with `make browser` if it is missing."""
    path = Path("/usr/bin/chromium")
    if not path.exists():
        subprocess.run(["make", "-C", str(ROOT), "browser"], capture_output=True, timeout=900)
    return str(path) if path.exists() else None


# What the new-study page says about one search-space row, and what launch.py says
# about the files the same form values write: the two must agree.
def row_error(response, index: int) -> str:
    page = response.content.decode()
    match = re.search(rf'id="row-params-{index}".*?<div class="fielderror row-error" '
                      rf'role="alert">(.*?)</div>', page, re.S)
    assert match, f"no error shown at row {index}"
    return unescape(match.group(1)).strip()


def cli_error(values, theme_id, tmp_path) -> str:
    """What `launch.py` says about the files of the same values."""
    folder = tmp_path / "cli"
    folder.mkdir(exist_ok=True)
    for name, text in study_configs.compose(values, tmp_path, theme_id=theme_id).items():
        (folder / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=theme_id))
    exc = info.value
    return ConfigError(exc.message, file=Path(exc.file).name, key=exc.key, fix=exc.fix).one_line()
