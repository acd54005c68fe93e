"""Shared fixtures: a small slice of the real digits data, tiny configs, a real Ray."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tuning.data.theme import Sample, ThemeSpec

ROOT = Path(__file__).resolve().parents[1]


def write_digits_folder(folder: Path, *, per_class: int, classes: int = 10) -> Path:
    """An ImageFolder tree of real 8x8 digits: folder/<digit>/<n>.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {c: 0 for c in range(classes)}
    for image, label in zip(digits.images, digits.target):
        label = int(label)
        if label >= classes or counts[label] >= per_class:
            continue
        path = folder / str(label) / f"{counts[label]:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(path)
        counts[label] += 1
    return folder


def theme_from_folder(folder: Path, *, theme_id: int = 1, name: str = "digits_slice"
                      ) -> ThemeSpec:
    class_names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    samples = tuple(Sample(str(path.resolve()), class_names.index(path.parent.name))
                    for path in sorted(folder.glob("*/*.png")))
    return ThemeSpec(theme_id, name, class_names, samples, str(folder.resolve()))


def make_site(folder: Path, images: Path, *, theme_name: str) -> dict:
    """A migrated SQLite DB file holding one theme imported from `images`, and the
    environment that points launch.py and manage.py at it (and at an MLflow store)."""
    import subprocess

    env = {**os.environ,
           "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
           "MEDIA_ROOT": str(folder / "media"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
           "PYTHONUNBUFFERED": "1"}
    for name in ("DJANGO_SETTINGS_MODULE", "MLFLOW_RUN_ID", "RAY_ADDRESS"):
        env.pop(name, None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=folder)
    out = subprocess.run([*manage, "import_theme", str(images), "--name", theme_name],
                         env=env, check=True, cwd=folder, capture_output=True, text=True)
    return {"folder": folder, "env": env, "theme_id": int(out.stdout.strip().splitlines()[-1])}


# What the suite writes stays small: pyproject.toml's tmp_path_retention_policy removes
# a passing test's tmp_path, and _module_folders_go_after_their_module removes the
# folders a module's fixtures made with tmp_path_factory once the module has passed.
# A whole run kept 7 to 14 GB before (mostly ResNet18 checkpoints with Adam's state,
# 134 MB each), and CI ran out of disk. A session-scoped fixture must make its folder
# with session_folder(), or the first module that asked for it would remove it.
_SESSION_MARK = ".session"
_FAILED_MODULES: set[str] = set()


def session_folder(tmp_path_factory, name: str) -> Path:
    # A mark beside the folder (not in it: the folder may be imported as a theme), not a
    # set here: a conftest that imports this module by its package name gets a second
    # copy of its globals.
    folder = tmp_path_factory.mktemp(name)
    folder.with_name(folder.name + _SESSION_MARK).touch()
    return folder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _FAILED_MODULES.add(str(item.fspath))
    return report


@pytest.fixture(scope="module", autouse=True)
def _module_folders_go_after_their_module(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if str(request.node.fspath) in _FAILED_MODULES:
        return  # kept for whoever reads the failure
    for folder in set(base.iterdir()) - before:
        if folder.suffix != _SESSION_MARK and \
                not folder.with_name(folder.name + _SESSION_MARK).exists():
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _mlflow_tracking_uri_restored():
    """A module that points MLflow's process-wide tracking URI (and with it the
    MLFLOW_TRACKING_URI variable) at its own store leaves the next module on its worker
    as it found it: that store's folder is gone by then."""
    import mlflow.tracking._tracking_service.utils as tracking

    before = tracking._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    yield
    tracking.set_tracking_uri(before[0])
    if before[1] is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before[1]


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    return write_digits_folder(session_folder(tmp_path_factory, "digits"), per_class=24,
                               classes=4)


@pytest.fixture(scope="session")
def digits_theme(digits_folder) -> ThemeSpec:
    return theme_from_folder(digits_folder)


def tiny_config_files(folder: Path, *, n_trials: int = 2, epochs: int = 1,
                      study: dict | None = None, space: dict | None = None,
                      base: dict | None = None, params: dict | None = None,
                      infra: dict | None = None, augments: dict | None = None,
                      light_checkpoints: bool = False) -> Path:
    """The four YAML files for a run that takes seconds: 16 px gray, ResNet18, CPU.

    light_checkpoints: SGD without momentum, which keeps no optimizer state, in place of
    the tuned Adam/AdamW: a checkpoint of 45 MB, not 134, written every epoch (for tests
    whose trials run many epochs or checkpoint to a slow store)."""
    folder.mkdir(parents=True, exist_ok=True)
    optuna_params = {
        "study": {"name": "tiny", "direction": "maximize", "metric": "test_acc",
                  "n_trials": n_trials, "timeout": None, **(study or {})},
        "params_to_tune": space or {
            "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
            "training.optimizer": {"type": "categorical", "choices": ["Adam", "AdamW"]},
        },
        "base_params": base if base is not None else {
            "model": {"name": "ResNet18"},
            "training": {"num_epochs": epochs, "run_name": "base_run", "batch_size": 16},
            "data": {"split_ratio": {"train": 0.6, "valid": 0.2, "test": 0.2}, "seed": 3},
        },
    }
    files = {
        "optuna_params.yaml": optuna_params,
        "params.yaml": params if params is not None else {
            "training": {"run_name": "tiny_run"},
            "data": {"image_size": 16, "channels": 1}},
        "config.yaml": infra if infra is not None else {
            "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "log_models": "all"},
            "ray": {"storage_path": str(folder / "ray_results")},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2,
            "cache_dir": str(folder / "cache")},
        "augments.yaml": augments if augments is not None else {"random_crop_padding": 1},
    }
    if light_checkpoints:
        optuna_params["params_to_tune"].pop("training.optimizer", None)
        optuna_params["base_params"].setdefault("training", {}).update(
            optimizer="SGD", momentum=0.0)
    for name, data in files.items():
        (folder / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@pytest.fixture
def config_dir(tmp_path) -> Path:
    return tiny_config_files(tmp_path / "configs")


def _start_local_ray(ray, attempts: int = 3) -> None:
    # Ray gives a raylet 30 s to register (hard-coded in ray._private.node); when
    # `make test`'s parallel workers start their clusters on 2 busy cores it can miss
    # that, and every test of the worker would then error on this one fixture.
    for attempt in range(1, attempts + 1):
        try:
            # address="local": never join a cluster some `ray start` left on the machine.
            ray.init(address="local", num_cpus=2, include_dashboard=False,
                     log_to_driver=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster (2 CPUs) shared by the tests that run studies."""
    import ray

    if not ray.is_initialized():
        _start_local_ray(ray)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_local_join(ray_local) -> dict:
    """How a launch.py child process joins `ray_local` instead of starting its own Ray:
    config.yaml's ray.address, and these environment variables. The cluster's token goes
    explicitly: ~/.ray/auth_token is shared by every Ray on the machine and may be
    replaced while the session runs."""
    from ray._raylet import AuthenticationTokenLoader

    token = AuthenticationTokenLoader.instance().get_raw_token()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {}
    return {"address": ray_local.get_runtime_context().gcs_address, "env": env}


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A real MLflow store: SQLite with local artifacts, in this test's folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(autouse=True)
def _no_exported_run_id(monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    yield


# Tests that use these fixtures get the matching marker without having to say so:
# `make test-fast` deselects them, and a test cannot start Ray or PostgreSQL unmarked.
_FIXTURE_MARKERS = {"ray_local": "ray", "ray_local_join": "ray", "postgres": "postgres"}


# `make test` runs files in parallel (pytest-xdist, --dist loadfile) and hands them out
# in collection order, so the longest go first: one that started last would keep the
# run waiting for it. Files over about a minute, longest first, from one serial run
# (2 cores, 2026-12-02; bench/README.md); the rest follow by their heaviest marker.
_LONGEST_FIRST = [
    "cluster/test_cluster_nodes.py", "reliability/test_reliability_s3_resume.py",
    "cluster/test_cluster_jobs.py", "test_launch_promises.py",
    "reliability/test_reliability_mlflow_outage.py", "web/test_web_browser.py",
    "web/test_web_ray_job.py", "test_launch.py", "reliability/test_reliability_lease.py",
    "reliability/test_reliability_resume.py", "test_launch_contract.py",
    "tuning/test_warm_start.py", "tuning/test_mlflow_model_centric.py",
    "tuning/test_model_evidence.py", "reliability/test_reliability_database.py",
    "tuning/test_study.py", "tuning/test_registered_model.py",
    "reliability/test_reliability_trials.py", "test_hardening_inputs.py",
    "web/test_web_cancel.py", "reliability/test_hardening_lease.py",
]
_MARKER_WEIGHT = {"cluster": 0, "ray": 1, "postgres": 1, "browser": 2, "slow": 3}


def _file_rank(item) -> int:
    path = Path(str(item.fspath)).relative_to(Path(__file__).parent).as_posix()
    if path in _LONGEST_FIRST:
        return _LONGEST_FIRST.index(path)
    marks = {m.name for m in item.iter_markers()} & _MARKER_WEIGHT.keys()
    return len(_LONGEST_FIRST) + min([_MARKER_WEIGHT[m] for m in marks],
                                     default=len(_MARKER_WEIGHT))


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        callspec = getattr(item, "callspec", None)
        if callspec and any("postgres" in str(v) for v in callspec.params.values()):
            item.add_marker("postgres")
    rank: dict[str, int] = {}
    for item in items:
        rank[item.fspath] = min(rank.get(item.fspath, 10**6), _file_rank(item))
    # Stable: within a rank, files keep their order, and tests within a file theirs.
    items.sort(key=lambda item: rank[item.fspath])
