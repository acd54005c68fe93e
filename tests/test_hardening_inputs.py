"""Bad inputs hardened (issue 21, items 2, 4 and parts of 8), through the real commands:
each is refused with exit 2 and one line naming the input and the fix, no traceback,
nothing created. Theme names MLflow would refuse (at import, and for a theme already in
the database at `--dry-run` and at the start of the real run), a garbage `model.weights`
file, a bool where a number belongs, `watch_studies --interval`; and import_theme tells
of a class folder it leaves out (`...`).

The launches run four at a time (each costs seconds of imports); tests read outcomes.
"""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import make_site, tiny_config_files, write_digits_folder

ROOT = Path(__file__).resolve().parents[1]
BAD_THEME_NAME = "cats/dogs: v2"
# Through the real command; every rule of tracking/names.py is checked in process below.
IMPORT_NAMES = ("a/b", "o'brien", "what?")
INTERVALS = ("abc", "0.0001")



@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    created: set[str]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _base(model: dict | None = None) -> dict:
    return {"model": {"name": "ResNet18", **(model or {})},
            "training": {"num_epochs": 1, "run_name": "base_run", "batch_size": 16},
            "data": {"split_ratio": {"train": 0.6, "valid": 0.2, "test": 0.2}, "seed": 3}}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("hardening_inputs")
    images = write_digits_folder(folder / "images", per_class=20, classes=2)
    (folder / "site").mkdir()
    site = make_site(folder / "site", images, theme_name="hardening_digits")
    # A theme renamed in the database (the admin, or an import before the rule) to a
    # name MLflow's registry refuses.
    out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "import_theme", str(images),
                          "--name", "to_rename"], env=site["env"], cwd=folder,
                         capture_output=True, text=True, check=True)
    renamed_id = int(out.stdout.strip().splitlines()[-1])
    db = sqlite3.connect(folder / "site" / "db.sqlite3")
    with db:
        db.execute("update data_access_theme set name = ? where id = ?",
                   (BAD_THEME_NAME, renamed_id))
    db.close()
    return {**site, "root": folder, "images": images, "renamed_id": renamed_id}


def _weights_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"garbage": b"\x00garbage, not a torch file" * 10, "empty": b"",
             "pickled_dict": pickle.dumps({"conv1.weight": Path("/tmp")})}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(data)
    paths["list"] = folder / "list.pt"
    torch.save([1, 2, 3], paths["list"])
    return paths


def _launch_cases(site: dict) -> dict[str, tuple[list[str], bool]]:
    """name -> (launch.py arguments, dry run?)."""
    root = site["root"]
    cases: dict[str, tuple[list[str], bool]] = {}
    plain = tiny_config_files(root / "configs" / "plain", n_trials=1)
    for dry in (True, False):
        cases[f"bad_theme_name-{dry}"] = (["--configs", str(plain), "--theme-id",
                                           str(site["renamed_id"])], dry)
    weights = _weights_files(root / "weights")
    for name, path in weights.items():
        configs = tiny_config_files(root / "configs" / f"weights_{name}", n_trials=1,
                                    base=_base({"weights": str(path)}))
        for dry in ((True, False) if name == "garbage" else (True,)):
            cases[f"weights_{name}-{dry}"] = (["--configs", str(configs), "--theme-id",
                                               str(site["theme_id"])], dry)
    steps = tiny_config_files(root / "configs" / "steps", n_trials=1, params={
        "training": {"run_name": "tiny_run", "steps_per_epoch": True},
        "data": {"image_size": 16, "channels": 1}})
    cases["steps_per_epoch_true-True"] = (["--configs", str(steps), "--theme-id",
                                           str(site["theme_id"])], True)
    return cases


def _run(site: dict, name: str, command: list[str]) -> Outcome:
    run = site["root"] / "runs" / name
    run.mkdir(parents=True)
    env = {**site["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{run}/mlflow.db"}
    before = _files(run)
    result = subprocess.run(command, env=env, cwd=run, capture_output=True, text=True,
                            timeout=300)
    return Outcome(result.returncode, result.stdout, result.stderr, _files(run) - before)


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


@pytest.fixture(scope="module")
def outcomes(site) -> dict[str, Outcome]:
    commands = {}
    for name, (args, dry) in _launch_cases(site).items():
        commands[name] = [sys.executable, str(ROOT / "launch.py"), *args,
                          *(["--dry-run"] if dry else [])]
    for index, theme_name in enumerate(IMPORT_NAMES):
        commands[f"import_name_{index}"] = _manage("import_theme", str(site["images"]),
                                                   "--name", theme_name)
    for interval in INTERVALS:
        commands[f"interval_{interval}"] = _manage("watch_studies", "--interval", interval)
    dotted = site["root"] / "dotted"
    for label in ("0", "1", "..."):
        (dotted / label).mkdir(parents=True)
        for image in sorted((site["images"] / ("1" if label == "..." else label)).glob("*.png")):
            (dotted / label / image.name).write_bytes(image.read_bytes())
    commands["import_dotted"] = _manage("import_theme", str(dotted), "--name", "dotted")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, site, name, command)
                   for name, command in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def _assert_refused(outcome: Outcome, *pieces: str) -> str:
    lines = outcome.stderr.strip().splitlines()
    assert outcome.returncode == 2, outcome.stdout[-2000:] + outcome.stderr[-3000:]
    assert len(lines) == 1, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr and "usage:" not in outcome.stderr
    for piece in pieces:
        assert piece in lines[0], lines[0]
    assert not outcome.created, f"left behind: {sorted(outcome.created)}"
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "real-run"])
def test_a_theme_named_as_mlflow_refuses_is_refused_before_anything_runs(outcomes, dry):
    outcome = outcomes[f"bad_theme_name-{dry}"]
    line = _assert_refused(outcome, "must not contain", "'/'", "':'", "rename the theme")
    assert BAD_THEME_NAME in line
    assert "trial" not in outcome.stdout.lower()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(IMPORT_NAMES)))
def test_import_theme_refuses_a_name_mlflow_would_refuse(site, outcomes, index):
    _assert_refused(outcomes[f"import_name_{index}"], "theme name", "Fix: pass another --name")


@pytest.mark.slow
def test_refused_imports_wrote_no_theme(site, outcomes):
    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    names = {row[0] for row in db.execute("select name from data_access_theme")}
    db.close()
    assert names == {"hardening_digits", BAD_THEME_NAME, "dotted"}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["garbage-True", "garbage-False", "pickled_dict-True",
                                  "empty-True", "list-True"])
def test_a_garbage_weights_file_is_one_line_without_torch_advice(outcomes, case):
    outcome = outcomes[f"weights_{case}"]
    _assert_refused(outcome, "model.weights", "state_dict")
    assert "weights_only" not in outcome.stdout + outcome.stderr


@pytest.mark.slow
def test_a_bool_is_not_a_number_in_the_configs(outcomes):
    _assert_refused(outcomes["steps_per_epoch_true-True"], "steps_per_epoch",
                    "a number is expected, not true")


@pytest.mark.slow
@pytest.mark.parametrize("interval", INTERVALS)
def test_watch_studies_interval_is_checked_with_a_floor(outcomes, interval):
    _assert_refused(outcomes[f"interval_{interval}"], "'--interval'", "from 0.5")


@pytest.mark.slow
def test_import_theme_names_the_class_folder_it_leaves_out(outcomes):
    outcome = outcomes["import_dotted"]
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    warnings = [line for line in outcome.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "/dotted/..." in warnings[0], outcome.stderr
    assert "2 classes" in outcome.stdout and "1 hidden folder(s) ignored" in outcome.stdout


# -- the name rule, in process: whatever MLflow refuses, names.py refuses first ---------

@pytest.mark.parametrize("theme_name", [
    "a/b", "a:b", "..", "..x", ".", "./x", "x/..", "o'brien", "what?", "#1", "tab\there",
    "nl\nhere", "x" * 251, " lead", "trail ", "", "   ", "a@b", "dq\"x", "é", "a b", "x.y",
    "digits_demo", "m-123", "a\\b", "%20",
])
def test_a_theme_name_mlflow_refuses_is_always_refused_by_the_rule(theme_name):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_experiment_name, _validate_model_name

    from tuning.tracking.names import registered_model_name, theme_name_problem

    problem = theme_name_problem(theme_name)
    try:
        _validate_model_name(registered_model_name(theme_name))
        _validate_experiment_name(theme_name)
    except MlflowException:
        assert problem is not None, theme_name
    if problem is None:
        assert theme_name.strip() == theme_name and "/" not in theme_name


@pytest.mark.parametrize("name", ["garbage", "empty", "pickled_dict", "list"])
def test_a_garbage_weights_file_is_a_config_error_in_process(tmp_path, name):
    from tuning.errors import ConfigError
    from tuning.trial.model import build_model

    path = _weights_files(tmp_path)[name]
    with pytest.raises(ConfigError) as refused:
        build_model("ResNet18", num_classes=2, in_channels=1, weights=str(path))
    line = refused.value.one_line()
    assert "model.weights" in line and str(path) in line and "weights_only" not in line


@pytest.mark.parametrize("section, key", [("training", "steps_per_epoch"),
                                          ("training", "learning_rate"),
                                          ("data", "channels"), ("data", "image_size")])
def test_a_bool_is_refused_for_every_number(section, key):
    from pydantic import ValidationError

    from tuning.config.params import TrainingParams

    with pytest.raises(ValidationError, match="a number is expected, not true"):
        TrainingParams.model_validate({section: {key: True}})
    assert TrainingParams.model_validate({"model": {"pretrained": True}}).model.pretrained
