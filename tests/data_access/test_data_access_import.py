"""Importing themes: the happy paths, each user error, and that a failure leaves nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError
from PIL import Image

from data_access import services
from data_access.models import Theme, ThemeImage
from tuning.errors import DataError, ThemeError

pytestmark = pytest.mark.django_db


def test_import_folder_copies_every_image_under_media_root(image_tree, media_root):
    theme = services.theme_import_folder(directory=image_tree, name="pets",
                                         description="cats and dogs")

    assert theme.description == "cats and dogs"
    rows = list(ThemeImage.objects.filter(theme=theme).order_by("label", "id"))
    assert [r.label for r in rows] == ["cat"] * 3 + ["dog"] * 4
    for row in rows:
        assert row.image.name.startswith(f"themes/{theme.id}/{row.label}/")
        stored = Path(row.image.path)
        assert stored.is_file()
        assert stored.is_relative_to(media_root)
    # Copies, byte for byte: the source tree is left as it was.
    sources = sorted(p.name for p in image_tree.rglob("*") if p.suffix.lower() in
                     {".png", ".jpg", ".jpeg", ".bmp"} and not p.name.startswith("."))
    assert sorted(Path(r.image.name).name for r in rows) == sources
    source = (image_tree / "dog" / "more" / "d.png").read_bytes()
    assert any(Path(r.image.path).read_bytes() == source for r in rows)


def test_import_theme_command_prints_summary_then_id(image_tree, capsys):
    call_command("import_theme", str(image_tree), "--name", "pets")

    lines = capsys.readouterr().out.strip().splitlines()
    theme = Theme.objects.get(name="pets")
    assert lines[-2] == f"Imported theme 'pets' (id {theme.id}): 7 images, 2 classes"
    assert lines[-1] == str(theme.id)


def _no_trace_left(media_root: Path, media_files) -> None:
    assert Theme.objects.count() == 0
    assert ThemeImage.objects.count() == 0
    assert media_files(media_root) == []


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("flat", "has no class sub-folders"),
        ("no_images", "No images in"),
        ("empty_class", "Class folder(s) without images"),
    ],
)
def test_badly_shaped_folders_are_refused(tmp_path, make_image, media_root, media_files,
                                          layout, expected):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "flat":
        make_image(root / "a.png")
    elif layout == "no_images":
        (root / "cat").mkdir(parents=True)
        (root / "cat" / "notes.txt").write_text("x")
    elif layout == "empty_class":
        make_image(root / "cat" / "a.png")
        (root / "dog").mkdir()

    with pytest.raises(ThemeError) as info:
        services.theme_import_folder(directory=root, name="t")

    message = str(info.value)
    assert expected in message
    assert "Fix:" in message
    assert "\n" not in message
    _no_trace_left(media_root, media_files)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is text, not a PNG", "not a PNG, JPEG or BMP image"),
        ("truncated", "truncated"),
        ("cmyk", "pixel mode CMYK"),
        ("gif", "not a PNG, JPEG or BMP image"),
    ],
)
def test_unusable_image_is_named_and_nothing_is_written(tmp_path, make_image, media_root,
                                                        media_files, content, reason):
    root = tmp_path / "data"
    make_image(root / "cat" / "good.png")
    make_image(root / "dog" / "good.png")
    bad = root / "dog" / "bad.png"
    if content == "truncated":
        make_image(bad, size=(64, 64))
        bad.write_bytes(bad.read_bytes()[:-40])
    elif content == "cmyk":
        bad = root / "dog" / "bad.jpg"
        make_image(bad, mode="CMYK", fmt="JPEG")
    elif content == "gif":
        make_image(bad, mode="P", fmt="GIF")
    else:
        bad.write_bytes(content)

    with pytest.raises(DataError) as info:
        services.theme_import_folder(directory=root, name="t")

    message = str(info.value)
    assert message.startswith(f"{bad}: cannot be used as an image")
    assert reason.lower() in message.lower()
    assert "Fix:" in message
    _no_trace_left(media_root, media_files)


def test_every_unusable_image_is_counted(tmp_path, make_image):
    root = tmp_path / "data"
    make_image(root / "cat" / "good.png")
    for i in range(3):
        (root / "cat" / f"bad{i}.png").write_bytes(b"junk")

    with pytest.raises(DataError, match="2 more of the 4 images"):
        services.theme_import_folder(directory=root, name="t")


def test_taken_name_is_refused_with_the_existing_id(image_tree, media_root, media_files):
    first = services.theme_import_folder(directory=image_tree, name="pets")
    files_before = media_files(media_root)

    with pytest.raises(ThemeError, match=rf"named 'pets' already exists \(id {first.id}\)"):
        services.theme_import_folder(directory=image_tree, name="pets")

    assert Theme.objects.count() == 1
    assert media_files(media_root) == files_before


def test_failure_while_writing_rolls_back_rows_and_files(image_tree, media_root, media_files,
                                                         monkeypatch):
    # The files are copied before the rows are inserted: fail the insert.
    def fail(*args, **kwargs):
        raise OperationalError("disk I/O error")

    monkeypatch.setattr(ThemeImage.objects, "bulk_create", fail)

    with pytest.raises(OperationalError):
        services.theme_import_folder(directory=image_tree, name="pets")

    _no_trace_left(media_root, media_files)
    assert not (media_root / "themes").exists() or not any((media_root / "themes").iterdir())


def test_command_user_error_exits_2_with_one_line(tmp_path):
    with pytest.raises(CommandError) as info:
        call_command("import_theme", str(tmp_path / "nowhere"), "--name", "x")

    assert info.value.returncode == 2
    assert "does not exist" in str(info.value)
    assert "\n" not in str(info.value)


def test_demo_theme_is_the_real_digits(media_root, capsys):
    call_command("import_demo_theme")

    lines = capsys.readouterr().out.strip().splitlines()
    theme = Theme.objects.get(name="digits_demo")
    assert lines[-1] == str(theme.id)
    assert lines[-2] == f"Imported theme 'digits_demo' (id {theme.id}): 1797 images, 10 classes"
    labels = sorted(set(theme.images.values_list("label", flat=True)))
    assert labels == [str(d) for d in range(10)]
    image = theme.images.order_by("id").first()
    assert os.path.abspath(image.image.path).startswith(str(media_root))
    with Image.open(image.image.path) as decoded:
        assert decoded.size == (8, 8)
        assert decoded.mode == "L"
        pixels = list(decoded.tobytes())
    # The first of scikit-learn's digits, 0..16 ink levels stretched to 0..255.
    from sklearn.datasets import load_digits

    expected = [round(v * 255 / 16) for v in load_digits().images[0].ravel()]
    assert pixels == expected
    assert image.label == "0"


def test_demo_theme_twice_names_the_existing_id(capsys):
    # The name is checked before any image is made, so a bare row stands in for it.
    first = Theme.objects.create(name="d")

    with pytest.raises(CommandError) as info:
        call_command("import_demo_theme", "--name", "d")
    assert info.value.returncode == 2
    assert f"(id {first.id})" in str(info.value)

    call_command("import_demo_theme", "--name", "d", "--exist-ok")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(first.id)
    assert Theme.objects.count() == 1


def test_theme_delete_removes_files(image_tree, media_root, media_files):
    theme = services.theme_import_folder(directory=image_tree, name="pets")
    assert media_files(media_root)

    # The files go on commit; the test's transaction never commits, so run the hooks.
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        services.theme_delete(theme_id=theme.id)

    _no_trace_left(media_root, media_files)
