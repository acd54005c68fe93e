"""Importing themes: the happy paths, each user error, and that a failure leaves nothing."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import zlib
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
REPO = Path(__file__).resolve().parents[2]


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
        ("empty", "has no class sub-folders"),
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
    elif layout == "empty":
        root.mkdir()
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


# --- bad input found in real folders: links, odd names, bombs, broken files -------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of width x height pixels, a few KB on disk (all zeros)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))


def _link_to_parent(root, tmp, make):
    (root / "cat" / "up").symlink_to("..")
    return ["cat/up: symbolic links are not followed"]


def _self_links(root, tmp, make):
    for name in ("self", "loop_a"):
        (root / "cat" / name).symlink_to(name if name == "self" else "loop_b")
    (root / "cat" / "loop_b").symlink_to("loop_a")
    return [f"cat/{name}: symbolic links" for name in ("loop_a", "loop_b", "self")]


def _links_outside(root, tmp, make):
    make(tmp / "outside" / "x.png")
    (root / "cat" / "ext").symlink_to(tmp / "outside")
    (root / "cat" / "x.png").symlink_to(tmp / "outside" / "x.png")
    (root / "bird").symlink_to(tmp / "outside")
    return ["dataset/bird: symbolic links", "cat/ext: symbolic links", "cat/x.png: symbolic"]


def _odd_file_names(root, tmp, make):
    make(root / "cat" / "new\nline.png")
    make(Path(os.fsdecode(bytes(root / "cat") + b"/caf\xe9.png")))
    make(root / "cat" / "long" / ("x" * 250 + ".png"))
    make(root / "cat" / ("x" * 250 + ".png"))
    return []


def _broken_images(root, tmp, make):
    truncated = make(root / "dog" / "bad\nname.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("not a JPEG")
    _bomb_png(root / "dog" / "bomb.png", 20000, 10000)
    os.mkfifo(root / "dog" / "pipe.png")
    make(root / "loose.png")
    # Found while walking the tree first, then while decoding.
    return ["dataset/loose.png: images must lie in a class sub-folder",
            "dog/pipe.png: images must be regular files",
            "dog/bad\\nname.png: cannot be used as an image: image file is truncated",
            "dog/bomb.png: cannot be used as an image: 20000x10000 pixels is over Pillow's limit",
            "dog/empty.png: cannot be used as an image: not a PNG",
            "dog/text.jpg: cannot be used as an image: not a PNG"]


def _nfd_class(root, tmp, make):
    make(root / "e\u0301te\u0301" / "a.png")
    return []


def _bad_class(folder: bytes):
    def build(root, tmp, make):
        make(Path(os.fsdecode(bytes(root) + b"/" + folder)) / "a.png")
    return build


def _nfc_and_nfd_classes(root, tmp, make):
    make(root / "\u00e9t\u00e9" / "a.png")
    make(root / "e\u0301te\u0301" / "a.png")


GOOD = [("cat", "a.png"), ("dog", "a.png")]


@pytest.mark.parametrize(
    ("build", "imported"),
    [
        (_link_to_parent, GOOD),
        (_self_links, GOOD),
        (_links_outside, GOOD),
        (_odd_file_names, GOOD + [("cat", "new_line.png"), ("cat", "caf_.png"),
                                  ("cat", "x" * 200 + ".png"), ("cat", "x" * 200 + ".png")]),
        (_broken_images, GOOD),
        (_nfd_class, GOOD + [("\u00e9t\u00e9", "a.png")]),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_links_odd_names_and_broken_files_are_skipped_with_one_warning_each(
        tmp_path, make_image, build, imported):
    root = tmp_path / "dataset"
    for path in GOOD:
        make_image(root.joinpath(*path))
    warnings = build(root, tmp_path, make_image)
    out, err = io.StringIO(), io.StringIO()

    call_command("import_theme", str(root), "--name", "t", stdout=out, stderr=err)

    theme = Theme.objects.get(name="t")
    lines = err.getvalue().splitlines()
    assert len(lines) == len(warnings)
    for line, expected in zip(lines, warnings, strict=True):
        assert line.startswith(f"warning: skipped {tmp_path}/")
        assert expected in line
        assert "Fix: " in line
    skipped = f"; {len(warnings)} file(s) skipped (see the warnings above)" if warnings else ""
    assert out.getvalue().splitlines()[-2].endswith(f"classes{skipped}")
    # Django gives a taken name a random "_abc1234" suffix.
    stored = [(row.label, re.sub(r"_[A-Za-z0-9]{7}\.png$", ".png", Path(row.image.name).name))
              for row in theme.images.all()]
    assert sorted(stored) == sorted(imported)


@pytest.mark.parametrize(
    ("build", "rule"),
    [
        (_bad_class(b"caf\xe9"), "must be valid UTF-8 text (got 'caf\\xe9')"),
        (_bad_class(b"a\tb"), "must not contain control or formatting characters (got 'a\\tb')"),
        (_bad_class(b"x\\..\\..\\evil"), "must not contain a backslash"),
        (_bad_class(b"   "), "must not be blank or start or end with spaces"),
        (_nfc_and_nfd_classes, "must differ after Unicode normalization (NFC)"),
    ],
    ids=["non-utf8", "control", "backslash", "blank", "nfc-nfd-duplicates"],
)
def test_bad_class_folder_names_refuse_the_import(tmp_path, make_image, media_root,
                                                   media_files, build, rule):
    root = tmp_path / "dataset"
    make_image(root / "cat" / "a.png")
    build(root, tmp_path, make_image)

    with pytest.raises(CommandError) as info:
        call_command("import_theme", str(root), "--name", "t")

    assert info.value.returncode == 2
    message = str(info.value)
    assert message.startswith(f"{root}/")
    assert rule in message
    assert "Fix: rename the folder" in message or "Fix: merge" in message
    assert message.isprintable()
    _no_trace_left(media_root, media_files)


def test_strict_refuses_what_would_be_skipped(tmp_path, make_image, media_root, media_files):
    root = tmp_path / "dataset"
    for path in GOOD:
        make_image(root.joinpath(*path))
    (root / "dog" / "up").symlink_to("..")

    with pytest.raises(CommandError) as info:
        call_command("import_theme", str(root), "--name", "t", "--strict")

    assert info.value.returncode == 2
    assert str(info.value).startswith(f"{root}/dog/up: symbolic links are not followed")
    _no_trace_left(media_root, media_files)


def test_image_over_the_pixel_limit_is_skipped_before_decoding(tmp_path, make_image,
                                                                monkeypatch):
    # Between the limit and twice the limit Pillow only warns, and would decode it all.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = tmp_path / "dataset"
    make_image(root / "cat" / "a.png", size=(30, 30))
    make_image(root / "cat" / "big.png", size=(40, 40))
    errors = []

    theme = services.theme_import_folder(directory=root, name="t", strict=False,
                                         on_skip=errors.append)

    assert [Path(r.image.name).name for r in theme.images.all()] == ["a.png"]
    assert [str(e) for e in errors] == [
        f"{root}/cat/big.png: cannot be used as an image: 40x40 pixels is over Pillow's limit "
        f"of 1000 pixels against decompression bombs. Fix: {services.themes.IMAGE_FIX}"]


def test_all_images_skipped_leaves_the_class_empty_and_refuses(tmp_path, make_image,
                                                               media_root, media_files):
    root = tmp_path / "dataset"
    make_image(root / "cat" / "a.png")
    (root / "dog").mkdir()
    (root / "dog" / "a.png").write_bytes(b"junk")

    with pytest.raises(ThemeError, match=r"without images in .*: dog; 1 file\(s\) were skipped"):
        services.theme_import_folder(directory=root, name="t", strict=False)

    _no_trace_left(media_root, media_files)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [40, 50], ids=["pillow-warns", "pillow-refuses"])
def test_launch_decode_refuses_an_image_that_became_a_bomb(tmp_path, make_image, monkeypatch,
                                                           side):
    # The check at import cannot see a file replaced later: decoding for a study (or a
    # prediction) must refuse it as an unreadable image, a ValueError, not decode it all.
    from theme_classifier.preprocess import decode

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = make_image(tmp_path / "big.png", mode="L", size=(side, side))

    with pytest.raises(ValueError, match=f"{side}x{side} pixels|exceeds limit"):
        decode(str(path), size=8, channels=1)


def _own_database(tmp_path: Path) -> Path:
    """A copy of the test database's tables in a file, for a child process (the test
    database lives in memory; copying it saves running every migration again)."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("copies the SQLite test database")
    connection.ensure_connection()
    database = tmp_path / "db.sqlite3"
    # Not backup(): it waits forever for the test's open transaction to end.
    script = "\n".join(connection.connection.iterdump())
    with sqlite3.connect(database) as target:
        target.executescript(script)
    return database


def _theme_rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT COUNT(*) FROM data_access_theme").fetchone()[0]


def test_bad_class_folder_from_the_shell_exits_2_with_one_line(tmp_path, make_image,
                                                                run_manage):
    database = _own_database(tmp_path)
    root = tmp_path / "dataset"
    make_image(root / "cat" / "a.png")
    make_image(Path(os.fsdecode(bytes(root) + b"/bad\xff\nname")) / "a.png")
    media = tmp_path / "media"

    result = run_manage("import_theme", str(root), "--name", "t",
                        database_url=f"sqlite:///{database}", media_root=media)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{root}/bad\\xff\\nname: class folder names must be valid UTF-8 text" in lines[0]
    assert "Fix: rename the folder." in lines[0]
    assert _theme_rows(database) == 0
    assert not media.exists() or not any(p.is_file() for p in media.rglob("*"))


# Runs import_theme in a child that sends itself SIGTERM while copying its third image.
_STOPPED_MIDWAY = """
import os, signal, sys
import django
django.setup()
from django.core.files.storage import FileSystemStorage
from django.core.management import execute_from_command_line
save, saves = FileSystemStorage._save, []
def save_then_stop(self, name, content):
    saves.append(name)
    if len(saves) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return save(self, name, content)
FileSystemStorage._save = save_then_stop
execute_from_command_line(["manage.py", "import_theme", sys.argv[1], "--name", "t"])
"""


def test_import_stopped_midway_leaves_no_row_and_no_file(tmp_path, image_tree):
    database = _own_database(tmp_path)
    media = tmp_path / "media"
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{database}", MEDIA_ROOT=str(media),
               DJANGO_SETTINGS_MODULE="web.settings")

    result = subprocess.run([sys.executable, "-c", _STOPPED_MIDWAY, str(image_tree)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr.splitlines() == ["import_theme: stopped by SIGTERM; nothing was imported."]
    assert _theme_rows(database) == 0
    assert [p for p in media.rglob("*") if p.is_file()] == []
