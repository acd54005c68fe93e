"""Settings come from the environment and refuse an unsafe production setup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _settings(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = ("import json, web.settings as s; print(json.dumps({'debug': s.DEBUG, "
            "'hosts': s.ALLOWED_HOSTS, 'media': s.MEDIA_ROOT, "
            "'db': str(s.DATABASES['default']['NAME'])}))")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("DJANGO_") and k not in {"DATABASE_URL", "MEDIA_ROOT"}}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_defaults_are_a_production_setup_at_the_repo_root():
    import json

    # No DJANGO_SECRET_KEY: the command line still runs (with a random key).
    result = _settings({})
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values == {"debug": False, "hosts": ["127.0.0.1", "localhost"],
                      "media": str(ROOT / "media"), "db": str(ROOT / "db.sqlite3")}


def test_serving_without_a_secret_key_is_refused():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    result = subprocess.run([sys.executable, "-c", "import web.wsgi"], cwd=ROOT,
                            env={**clean, "DJANGO_DEBUG": "false"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_with_a_secret_key_starts():
    result = _settings({"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "x" * 50,
                        "DJANGO_ALLOWED_HOSTS": "tune.example.org"})
    assert result.returncode == 0, result.stderr
    assert '"debug": false' in result.stdout
    assert "tune.example.org" in result.stdout
