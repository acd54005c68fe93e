"""Reading themes the way launch.py does, and what a user sees when that fails."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from data_access import selectors, services
from data_access.models import Theme
from tuning.data.theme import ThemeSpec
from tuning.errors import ThemeError

pytestmark = pytest.mark.django_db


def test_spec_has_sorted_classes_label_indices_and_absolute_paths(tmp_path, make_image,
                                                                  media_root):
    root = tmp_path / "data"
    # Created out of order: the spec sorts class names, whatever the import order.
    for label, count in (("zebra", 2), ("ant", 1), ("moth", 3)):
        for i in range(count):
            make_image(root / label / f"{i}.png")
    theme = services.theme_import_folder(directory=root, name="animals")

    spec = selectors.theme_get_spec(theme_id=theme.id)

    assert isinstance(spec, ThemeSpec)
    assert spec.id == theme.id
    assert spec.name == "animals"
    assert spec.class_names == ("ant", "moth", "zebra")
    assert spec.class_counts() == {"ant": 1, "moth": 3, "zebra": 2}
    assert spec.media_root == str(media_root)
    assert os.path.isabs(spec.media_root)
    for sample in spec.samples:
        assert os.path.isabs(sample.path)
        assert sample.path.startswith(spec.media_root + os.sep)
        assert Path(sample.path).is_file()
        # The label index points at the folder the image came from.
        assert f"/{spec.class_names[sample.label]}/" in sample.path


def test_missing_theme_names_the_database_and_the_fix():
    with pytest.raises(ThemeError) as info:
        selectors.theme_get_spec(theme_id=7)

    message = str(info.value)
    where = selectors.database_description()
    assert message.startswith(f"Theme 7 not found in database {where}.")
    assert "python manage.py list_themes" in message
    assert "python manage.py import_theme DIR --name NAME" in message
    assert info.value.exit_code == 2


def test_show_theme_command_exits_2_for_a_missing_theme():
    with pytest.raises(CommandError) as info:
        call_command("show_theme", "7")
    assert info.value.returncode == 2
    assert str(info.value).startswith("Theme 7 not found in database ")


def test_empty_theme_is_a_theme_error():
    theme = Theme.objects.create(name="empty")
    with pytest.raises(ThemeError, match=f"Theme {theme.id} \\('empty'\\) has no images"):
        selectors.theme_get_spec(theme_id=theme.id)


def test_theme_list_counts_images_and_classes(image_tree, capsys):
    pets = services.theme_import_folder(directory=image_tree, name="pets")
    Theme.objects.create(name="empty")

    summaries = selectors.theme_list()

    assert [(s.name, s.image_count, s.class_count) for s in summaries] == [
        ("pets", 7, 2), ("empty", 0, 0)]
    assert selectors.theme_find_id(name="pets") == pets.id
    assert selectors.theme_find_id(name="nope") is None

    call_command("list_themes")
    out = capsys.readouterr().out
    assert "pets" in out and "empty" in out


def test_list_themes_on_an_empty_database_says_how_to_import(capsys):
    call_command("list_themes")
    assert "No themes in database" in capsys.readouterr().out


# -- as a user runs it: a child process with its own database


@pytest.mark.slow
def test_not_found_from_the_command_line(tmp_path, run_manage):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrate = run_manage("migrate", "-v", "0", database_url=url, media_root=tmp_path / "m")
    assert migrate.returncode == 0, migrate.stderr

    result = run_manage("show_theme", "999", database_url=url, media_root=tmp_path / "m")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"Theme 999 not found in database sqlite:{tmp_path / 'db.sqlite3'}." in lines[0]
    assert "Traceback" not in result.stderr


def test_unmigrated_database_says_run_migrate(tmp_path, run_manage):
    result = run_manage("show_theme", "1", database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                        media_root=tmp_path / "m")

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "has no themetune tables" in result.stderr
    assert "python manage.py migrate" in result.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_postgresql_says_check_database_url_without_the_password(tmp_path,
                                                                             run_manage):
    port = _closed_port()
    url = f"postgresql://tuner:hunter2secret@127.0.0.1:{port}/themes"

    result = run_manage("list_themes", database_url=url, media_root=tmp_path / "m",
                        extra_env={"PGCONNECT_TIMEOUT": "3"})

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"postgresql://tuner@127.0.0.1:{port}/themes" in result.stderr
    assert "check DATABASE_URL" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout
