"""Django for the data_access tests, without pytest settings outside this folder.

pytest-django reads DJANGO_SETTINGS_MODULE at start-up; setting it here (at collection)
and calling django.setup() keeps tests elsewhere free of Django, while pytest-django's
fixtures (db, settings, admin_client) still work: they look at the settings only when
a test runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")

import django  # noqa: E402

django.setup()

from PIL import Image  # noqa: E402


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    """Every test writes its images under its own MEDIA_ROOT."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    # The default hasher is slow on purpose; admin_client's superuser needs no safety.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return root


def _make_image(path: Path, *, mode: str = "RGB", size: tuple[int, int] = (6, 5),
                fmt: str | None = None) -> Path:
    """A small real image; the pixel values differ per file so no two are equal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = sum(os.fsencode(path)) % 200
    color = {"L": seed, "RGB": (seed, 10, 20), "RGBA": (seed, 10, 20, 128),
             "CMYK": (seed, 1, 2, 3), "P": seed}[mode]
    Image.new(mode, size, color).save(path, format=fmt)
    return path


@pytest.fixture
def make_image():
    return _make_image


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """cat: 3 images, dog: 4 (one in a sub-folder, one .JPG), plus files to ignore."""
    root = tmp_path / "dataset"
    _make_image(root / "cat" / "a.png", mode="L")
    _make_image(root / "cat" / "b.png", mode="RGBA")
    _make_image(root / "cat" / "c.jpg", mode="RGB")
    _make_image(root / "dog" / "a.bmp", mode="RGB")
    _make_image(root / "dog" / "b.jpeg", mode="L")
    _make_image(root / "dog" / "c.JPG", mode="RGB", fmt="JPEG")
    _make_image(root / "dog" / "more" / "d.png", mode="RGB")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"ignored: hidden")
    (root / "README.md").write_text("top-level files are ignored")
    return root


@pytest.fixture
def media_files():
    """Lists the files under a folder (to check that nothing was left behind)."""
    def files(root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_file())
    return files


@pytest.fixture
def run_manage():
    return _run_manage


def _run_manage(*args: str, database_url: str, media_root: Path,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """manage.py in a child process, as a user runs it."""
    env = dict(os.environ)
    env.update({"DATABASE_URL": database_url, "MEDIA_ROOT": str(media_root),
                "DJANGO_SETTINGS_MODULE": "web.settings"})
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
