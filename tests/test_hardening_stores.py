"""predict.py and launch.py hardened (issue 21, item 3 and predict.py's parts of 8),
through the real commands. A command that only reads opens the MLflow store read-only:
another application's SQLite file, a file that is no database, an empty file or a server
that does not answer is refused with exit 2 and one line, the file left as it was and
nothing created; a models:/ URI is looked up in the store given (MLflow's own lookup
made ./mlflow.db in the working folder). File names with a tab or newline keep the
tab-separated output one line per image, and the CSV round-trips them; a pipe given as
an argument is refused before the model loads, named as what it is; links and pipes in
a folder are skipped with a warning. A garbage MLFLOW_TRACKING_URI is refused by
`launch.py --dry-run` and by the real run.

The commands run four at a time (each costs seconds of imports); tests read outcomes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_site, tiny_config_files, write_digits_folder
from tests.web.test_web_try_model import THEME_NAME, make_champion

ROOT = Path(__file__).resolve().parents[1]
MODEL = f"models:/{THEME_NAME}_model@champion"
# Names that break a tab-separated line, or a terminal's.
ODD_NAMES = ("tab\there.png", "new\nline.png", "back\\slash.png")
GARBAGE_URIS = ("::garbage::", "foo://bar")

pytestmark = pytest.mark.slow


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    created: set[str]      # files the command left in its working folder
    seconds: float


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png(path: Path, seed: int) -> Path:
    pixels = (np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hardening_stores")
    (root / "mlflow").mkdir()
    store = make_champion(root / "mlflow")
    outside = root / "outside"
    outside.mkdir()
    _png(outside / "elsewhere.png", 9)
    folder = root / "images"
    folder.mkdir()
    for seed, name in enumerate(ODD_NAMES):
        _png(folder / name, seed)
    (folder / "link.png").symlink_to(outside / "elsewhere.png")
    (folder / "linked_folder").symlink_to(outside, target_is_directory=True)
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(root / "lone_pipe.png")
    other = root / "other_app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    db.close()
    garbage = root / "garbage.db"
    garbage.write_text("not a database\n" * 40)
    empty = root / "empty.db"
    empty.write_bytes(b"")
    return {"root": root, "store": store, "folder": folder, "other": other,
            "garbage": garbage, "empty": empty, "one": folder / ODD_NAMES[2],
            "digests": {p: _digest(p) for p in (other, garbage, empty)}}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("hardening_stores_site")
    images = write_digits_folder(folder / "images", per_class=20, classes=2)
    (folder / "site").mkdir()
    site = make_site(folder / "site", images, theme_name="stores_digits")
    return {**site, "configs": tiny_config_files(folder / "configs", n_trials=1)}


def _predict(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "predict.py"), *args]


def _commands(place: dict, site: dict, silent_port: int) -> dict[str, tuple[list[str], dict]]:
    """name -> (command, environment changes; None removes a variable)."""
    root, store = place["root"], place["store"]
    one = str(place["one"])
    no_env = {"MLFLOW_TRACKING_URI": None}
    commands = {
        "labels": (_predict("--model", MODEL, "--tracking-uri", store, str(place["folder"]),
                            "--csv", "labels.csv"), no_env),
        "fifo": (_predict("--model", MODEL, "--tracking-uri", f"sqlite:///{root}/none.db",
                          str(root / "lone_pipe.png")), no_env),
        "missing": (_predict("--model", MODEL, "--tracking-uri", f"sqlite:///{root}/none.db",
                             str(root / "nowhere.png")), no_env),
        "silent_server": (_predict("--model", MODEL, "--tracking-uri",
                                   f"http://127.0.0.1:{silent_port}", one), no_env),
    }
    for kind in ("other", "garbage", "empty"):
        commands[f"store_{kind}"] = (_predict("--model", MODEL, "--tracking-uri",
                                              f"sqlite:///{place[kind]}", one), no_env)
    # From the environment too, as most users set it.
    commands["store_other_env"] = (_predict("--model", MODEL, one),
                                   {"MLFLOW_TRACKING_URI": f"sqlite:///{place['other']}"})
    for index, uri in enumerate(GARBAGE_URIS):
        env = {"MLFLOW_TRACKING_URI": uri}
        commands[f"predict_uri_{index}"] = (_predict("--model", MODEL, one), env)
        for dry in (True, False):
            commands[f"launch_uri_{index}-{dry}"] = (
                [sys.executable, str(ROOT / "launch.py"), "--configs", str(site["configs"]),
                 "--theme-id", str(site["theme_id"]), *(["--dry-run"] if dry else [])],
                {**site["env"], **env})
    return commands


def _run(root: Path, name: str, command: list[str], changes: dict) -> Outcome:
    run = root / "runs" / name
    run.mkdir(parents=True)
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    started = time.monotonic()
    result = subprocess.run(command, env=env, cwd=run, capture_output=True, text=True,
                            timeout=120)
    return Outcome(result.returncode, result.stdout, result.stderr, _files(run),
                   time.monotonic() - started)


@pytest.fixture(scope="module")
def outcomes(place, site) -> dict[str, Outcome]:
    with socket.socket() as silent:   # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        commands = _commands(place, site, silent.getsockname()[1])
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(_run, place["root"], name, command, env)
                       for name, (command, env) in commands.items()}
            return {name: future.result() for name, future in futures.items()}


def _assert_refused(outcome: Outcome, *pieces: str) -> str:
    lines = outcome.stderr.strip().splitlines()
    assert outcome.returncode == 2, outcome.stdout[-2000:] + outcome.stderr[-3000:]
    assert len(lines) == 1, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr
    for piece in pieces:
        assert piece in lines[0], lines[0]
    assert not outcome.created, f"left behind: {sorted(outcome.created)}"
    assert outcome.stdout == ""
    return lines[0]


# -- the store is only read ----------------------------------------------------------------


@pytest.mark.parametrize("case, said", [
    ("store_other", "without MLflow's tables"), ("store_other_env", "without MLflow's tables"),
    ("store_garbage", "is not a SQLite database"), ("store_empty", "is an empty file")])
def test_a_store_that_is_not_mlflows_is_refused_and_left_as_it_was(place, outcomes, case,
                                                                   said):
    line = _assert_refused(outcomes[case], said, "not an MLflow store")
    assert ("--tracking-uri" if case != "store_other_env" else "MLFLOW_TRACKING_URI") in line
    for path, digest in place["digests"].items():
        assert _digest(path) == digest, f"{path} was changed"


def test_a_server_that_does_not_answer_is_given_up_on_within_seconds(outcomes):
    outcome = outcomes["silent_server"]
    _assert_refused(outcome, "does not answer", "no answer within")
    assert outcome.seconds < 30, outcome.seconds


def test_a_models_uri_is_read_from_the_store_given_and_nothing_is_made(place, outcomes):
    """--tracking-uri and no MLFLOW_TRACKING_URI: MLflow's own models:/ lookup asked the
    process's default store, ./mlflow.db, and made it."""
    outcome = outcomes["labels"]
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert outcome.created == {"labels.csv"}


# -- predict.py's paths ---------------------------------------------------------------------


def test_odd_file_names_keep_one_line_per_image_and_round_trip_in_the_csv(place, outcomes):
    outcome = outcomes["labels"]
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    lines = outcome.stdout.splitlines()
    assert len(lines) == len(ODD_NAMES), lines
    assert all(len(line.split("\t")) == 3 for line in lines), lines
    escaped = {name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
               for name in ODD_NAMES}
    assert {line.split("\t")[0].rsplit("/", 1)[-1] for line in lines} == escaped
    with open(place["root"] / "runs" / "labels" / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["path", "label", "probability"]
    assert {Path(row[0]).name for row in rows[1:]} == set(ODD_NAMES)


def test_links_and_pipes_in_a_folder_are_skipped_with_a_warning(place, outcomes):
    warnings = outcomes["labels"].stderr.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: ") for w in warnings), warnings
    by_name = {w.split(": ", 2)[1].rsplit("/", 1)[-1]: w for w in warnings}
    assert set(by_name) == {"link.png", "linked_folder", "pipe.png"}, warnings
    assert "symbolic links in a folder are not followed" in by_name["link.png"]
    assert "elsewhere.png" in by_name["link.png"]
    assert "named pipe (FIFO)" in by_name["pipe.png"]


def test_a_pipe_argument_is_refused_as_a_pipe_before_the_model_loads(outcomes):
    # The store does not exist: had the model been loaded first, that would be the error.
    _assert_refused(outcomes["fifo"], "lone_pipe.png is a named pipe (FIFO)")


def test_a_missing_path_is_refused_before_the_model_loads(outcomes):
    _assert_refused(outcomes["missing"], "nowhere.png: no such file or folder")


# -- a garbage MLFLOW_TRACKING_URI ----------------------------------------------------------


@pytest.mark.parametrize("index", range(len(GARBAGE_URIS)))
@pytest.mark.parametrize("command", ["launch_uri_{}-True", "launch_uri_{}-False",
                                     "predict_uri_{}"], ids=["dry-run", "real-run", "predict"])
def test_a_garbage_tracking_uri_is_refused(outcomes, command, index):
    line = _assert_refused(outcomes[command.format(index)], "MLFLOW_TRACKING_URI",
                           repr(GARBAGE_URIS[index]))
    assert "sqlite:///" in line   # the forms that work


def test_a_store_of_an_older_mlflow_is_refused_not_upgraded(tmp_path):
    """MLflow migrates a store that lacks a table of its schema when it opens it: a
    command that only reads says so instead (in process: the rule predict.py and the
    web go through)."""
    from tuning.errors import TrackingStoreError
    from tuning.tracking import registry

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for table in registry.MLFLOW_TABLES:
            db.execute(f"CREATE TABLE {table} (id INTEGER)")
    db.close()
    before = _digest(path)
    with pytest.raises(TrackingStoreError, match="older MLflow version.*mlflow db upgrade"):
        registry.check_readable(f"sqlite:///{path}")
    assert _digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["old.db"]
