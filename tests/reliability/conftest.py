"""Faults caused for real: a killed driver or worker, a stopped MLflow server, an
unreachable database. Each test runs launch.py (or run_study) as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_site, session_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def site(tmp_path_factory, digits_folder):
    """A migrated SQLite DB holding one imported theme, and the env that points at it."""
    return make_site(session_folder(tmp_path_factory, "site"), digits_folder, theme_name="crash_digits")
