"""Faults caused for real: a killed driver or worker, a stopped MLflow server, an
unreachable database. Each test runs launch.py (or run_study) as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def site(tmp_path_factory, digits_folder):
    """A migrated SQLite DB holding one imported theme, and the env that points at it."""
    folder = tmp_path_factory.mktemp("site")
    env = {**os.environ,
           "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
           "MEDIA_ROOT": str(folder / "media"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("DJANGO_SETTINGS_MODULE", "MLFLOW_RUN_ID", "RAY_ADDRESS"):
        env.pop(name, None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=folder)
    out = subprocess.run([*manage, "import_theme", str(digits_folder), "--name", "crash_digits"],
                         env=env, check=True, cwd=folder, capture_output=True, text=True)
    theme_id = int(out.stdout.strip().splitlines()[-1])
    return {"folder": folder, "env": env, "theme_id": theme_id}


@pytest.fixture(scope="session")
def ray_local():
    """tests/conftest.py's cluster, but never one that `ray start` left on the machine
    (a bare ray.init() would join it): address="local" always starts our own."""
    import ray

    from tuning.cluster import PACKAGE_DIR

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(PACKAGE_DIR.parent)}})
    yield ray
    ray.shutdown()
