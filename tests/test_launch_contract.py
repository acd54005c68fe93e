"""The dry run is the contract: whatever `launch.py --dry-run` refuses, the real run
refuses the same way (exit 2, one line, no traceback) before Ray or MLflow start, and
neither leaves anything behind: no file, no folder, no MLflow store, no database row.
A dry run that passes creates nothing either. No password of a URL is ever printed.

Every launch here is a real subprocess on a real Django DB; they run four at a time
(each costs seconds of imports) and every test only reads their outcomes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import make_site, tiny_config_files, write_digits_folder
from tuning.redact import redact_text, redact_url

ROOT = Path(__file__).resolve().parents[1]
SECRET = "SECRETPW"
# Most cases run launch.py or predict.py as a subprocess: out of `make test-fast`.
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    """A bad input. `{run}` in args or env stands for the run's own (empty) folder."""

    id: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    expect: str = ""                     # a piece of the one line on stderr
    command: str = "launch"  # or "import_theme", "import_demo_theme", "migrate", "predict"
    unreadable_config: bool = False


LAUNCH_CASES = [
    Case("n_trials_float", ("--n-trials", "1e30"), expect="key '--n-trials'"),
    Case("n_trials_overflow", ("--n-trials", "99999999999999999999999"),
         expect="key '--n-trials'"),
    Case("timeout_inf", ("--timeout", "inf"), expect="key '--timeout'"),
    Case("concurrency_huge", ("--max-concurrent-trials", "10000000000"),
         expect="key '--max-concurrent-trials'"),
    Case("unknown_record", ("--record-id", "999999"), expect="Study 999999 not found"),
    Case("mlflow_folder_missing", env={"MLFLOW_TRACKING_URI": "sqlite:///{run}/no/dir/m.db"},
         expect="does not exist"),
    Case("mlflow_root_folder_missing", env={"MLFLOW_TRACKING_URI": "sqlite:////nonexistent/d/m.db"},
         expect="/nonexistent/d"),
    Case("study_name_too_long", ("--study-name", "s" * 300), expect="at most 200"),
    Case("study_name_escape", ("--study-name", "red\x1b[31m"), expect="control characters"),
    Case("database_url_garbage", env={"DATABASE_URL": "garbage"}, expect="DATABASE_URL"),
    Case("database_url_empty", env={"DATABASE_URL": ""}, expect="empty"),
    Case("database_driver_missing", env={"DATABASE_URL": f"mysql://u:{SECRET}@h/db"},
         expect="MySQLdb"),
    Case("config_unreadable", unreadable_config=True, expect="cannot be read"),
    Case("journal_folder_missing", ("--storage", "journal:/nonexistent/dir/j.log"),
         expect="/nonexistent/dir"),
    Case("journal_in_missing_run_folder", ("--storage", "journal:{run}/no/j.log"),
         expect="does not exist"),
    Case("storage_password", ("--storage", f"postgresql://u:{SECRET}@127.0.0.1:1/x"),
         expect="postgresql://u:***@127.0.0.1:1/x"),
    Case("lease_stale_nan", env={"THEMETUNE_LEASE_STALE_S": "nan"},
         expect="THEMETUNE_LEASE_STALE_S"),
]
COMMAND_CASES = [
    Case("import_theme_media_root_file", env={"MEDIA_ROOT": "{run}/media_file"},
         command="import_theme", expect="MEDIA_ROOT"),
    Case("import_demo_media_root_file", env={"MEDIA_ROOT": "{run}/media_file"},
         command="import_demo_theme", expect="MEDIA_ROOT"),
    Case("import_theme_database_garbage", env={"DATABASE_URL": "garbage"},
         command="import_theme", expect="DATABASE_URL"),
    Case("migrate_database_garbage", env={"DATABASE_URL": "garbage"},
         command="migrate", expect="DATABASE_URL"),
    Case("migrate_database_empty", env={"DATABASE_URL": ""},
         command="migrate", expect="DATABASE_URL"),
    Case("predict_database_driver_missing", env={"DATABASE_URL": f"mysql://u:{SECRET}@h/db"},
         command="predict", expect="MySQLdb"),
]
# Dry runs that pass: each names a store that does not exist yet, which it must not make.
CREATING_NOTHING = [
    Case("dry_sqlite_storage", ("--storage", "sqlite:///{run}/optuna.db")),
    Case("dry_journal_storage", ("--storage", "journal:{run}/study.log")),
]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    created: set[str]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("contract")
    images = write_digits_folder(folder / "images", per_class=20, classes=2)
    (folder / "site").mkdir()
    site = make_site(folder / "site", images, theme_name="contract_digits")
    configs = tiny_config_files(folder / "configs", infra={
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db"},
        "ray": {"storage_path": str(folder / "ray_results")},
        "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 1,
        "cache_dir": str(folder / "cache")})
    return {**site, "root": folder, "images": images, "configs": configs}


def _fill(text: str, run: Path) -> str:
    return text.replace("{run}", str(run))


def _command(site: dict, case: Case, run: Path, dry_run: bool) -> list[str]:
    if case.command == "import_theme":
        return [sys.executable, str(ROOT / "manage.py"), "import_theme", str(site["images"]),
                "--name", f"refused_{case.id}"]
    if case.command == "import_demo_theme":
        return [sys.executable, str(ROOT / "manage.py"), "import_demo_theme",
                "--name", f"refused_{case.id}"]
    if case.command == "migrate":
        return [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput"]
    if case.command == "predict":
        return [sys.executable, str(ROOT / "predict.py"), "--theme-id", str(site["theme_id"]),
                str(site["images"])]
    args = [sys.executable, str(ROOT / "launch.py"), "--configs", str(site["configs"]),
            "--theme-id", str(site["theme_id"]), *(_fill(a, run) for a in case.args)]
    if case.unreadable_config:
        args += ["--config", str(_unreadable_file(run))]
    return args + (["--dry-run"] if dry_run else [])


def _unreadable_file(run: Path) -> Path:
    """A config file this process cannot read. Root reads a chmod 000 file anyway; no
    one can read /proc/self/mem from offset 0 (EIO), so it stands in then."""
    if os.geteuid() == 0:
        return Path("/proc/self/mem")
    path = run / "config.yaml"
    path.write_text("mlflow: {}\n")
    path.chmod(0)
    return path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _run(site: dict, case: Case, dry_run: bool) -> Outcome:
    run = site["root"] / "runs" / f"{case.id}-{'dry' if dry_run else 'real'}"
    run.mkdir(parents=True)
    if "MEDIA_ROOT" in case.env:
        (run / "media_file").write_text("a file where a folder should be\n")
    command = _command(site, case, run, dry_run)
    env = {**site["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{run}/mlflow.db",
           **{k: _fill(v, run) for k, v in case.env.items()}}
    before = _files(run)
    result = subprocess.run(command, env=env, cwd=run, capture_output=True, text=True,
                            timeout=300)
    return Outcome(result.returncode, result.stdout, result.stderr, _files(run) - before)


def _row_counts(site: dict) -> tuple[int, ...]:
    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    try:
        return tuple(db.execute(f"select count(*) from data_access_{table}").fetchone()[0]
                     for table in ("theme", "themeimage", "tuningstudy", "tuningtrial"))
    finally:
        db.close()


@pytest.fixture(scope="module")
def outcomes(site) -> dict:
    """Every case's outcome by (case id, dry run?), and the site as it was before."""
    jobs = [(case, dry) for case in LAUNCH_CASES for dry in (True, False)]
    jobs += [(case, False) for case in COMMAND_CASES]
    jobs += [(case, True) for case in CREATING_NOTHING]
    site_files, rows = _files(site["folder"]), _row_counts(site)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {(case.id, dry): pool.submit(_run, site, case, dry) for case, dry in jobs}
        results = {key: future.result() for key, future in futures.items()}
    return {"runs": results, "site_files_before": site_files, "rows_before": rows}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
@pytest.mark.parametrize("case", LAUNCH_CASES, ids=lambda c: c.id)
def test_launch_refuses_up_front(outcomes, case, dry_run):
    _assert_refused(outcomes["runs"][(case.id, dry_run)], case)


@pytest.mark.parametrize("case", COMMAND_CASES, ids=lambda c: c.id)
def test_import_commands_refuse_environment_mistakes(outcomes, case):
    _assert_refused(outcomes["runs"][(case.id, False)], case)


def _assert_refused(outcome: Outcome, case: Case) -> None:
    lines = outcome.stderr.strip().splitlines()
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert len(lines) == 1, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr
    assert case.expect in lines[0], lines[0]
    assert SECRET not in outcome.stdout + outcome.stderr
    assert not outcome.created, f"left behind: {sorted(outcome.created)}"


@pytest.mark.parametrize("case", CREATING_NOTHING, ids=lambda c: c.id)
def test_passing_dry_run_creates_nothing(outcomes, case):
    outcome = outcomes["runs"][(case.id, True)]
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert "nothing was started" in outcome.stdout
    assert not outcome.created, f"left behind: {sorted(outcome.created)}"


def test_refused_runs_leave_the_site_untouched(site, outcomes):
    """No row in any table, no file beside the database (an MLflow store, a journal)."""
    assert _row_counts(site) == outcomes["rows_before"]
    assert _files(site["folder"]) == outcomes["site_files_before"]


# ------------------------------------------------------------------ redaction, in-process

@pytest.mark.parametrize("text, shown", [
    ("postgresql://u:pw@db.local:5432/x", "postgresql://u:***@db.local:5432/x"),
    ("cannot open storage 'mysql://root:p@ss:w0rd@h/db': refused",
     "cannot open storage 'mysql://root:***@h/db': refused"),
    ("redis://:token@h:6379/0 and http://a:b@h/", "redis://:***@h:6379/0 and http://a:***@h/"),
    ('connection to server failed: password="s3cret" host=h', 'connection to server failed: '
     'password=*** host=h'),
    ("sqlite:////abs/optuna.db", "sqlite:////abs/optuna.db"),
    ("http://user@h:5000/", "http://user@h:5000/"),
])
def test_redact_text_masks_every_password(text, shown):
    assert redact_text(text) == shown


def test_redact_url_keeps_none_and_plain_urls():
    assert redact_url(None) is None
    assert redact_url("journal:/tmp/study.log") == "journal:/tmp/study.log"


def test_error_lines_never_carry_a_password():
    from tuning.errors import StorageError

    line = StorageError(f"cannot open storage 'postgresql://u:{SECRET}@h/x'.",
                        key="--storage").one_line()
    assert SECRET not in line and "postgresql://u:***@h/x" in line


def test_mlflow_params_tags_and_configs_are_logged_masked(tmp_path):
    from mlflow.tracking import MlflowClient

    from tuning.tracking import runs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("redact")).info.run_id
    url = f"postgresql://tune:{SECRET}@db.local/optuna"
    config = tmp_path / "config.yaml"
    config.write_text(f"mlflow:\n  tracking_uri: http://u:{SECRET}@mlflow.local\n")
    runs.log_params(client, run_id, {"storage": url})
    runs.set_tags(client, run_id, {"themetune.end_reason": f"cannot open {url}"})
    runs.log_file(client, run_id, config, "configs")
    run = client.get_run(run_id)
    assert run.data.params["storage"] == "postgresql://tune:***@db.local/optuna"
    assert SECRET not in run.data.tags["themetune.end_reason"]
    logged = Path(client.download_artifacts(run_id, "configs/config.yaml", str(tmp_path / "dl")))
    assert "http://u:***@mlflow.local" in logged.read_text()


def test_driver_lines_are_said_masked(capsys):
    from tuning.tracking import output

    output.say(f"Optuna storage postgresql://u:{SECRET}@h/x")
    output.warn(f"MLflow at http://u:{SECRET}@h:5000 is slow")
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "postgresql://u:***@h/x" in captured.out
