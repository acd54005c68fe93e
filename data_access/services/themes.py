"""Themes: import (an ImageFolder tree, or the demo digits), delete, default params.

Imports are all or nothing: every image is checked before anything is written, and a
failure while writing rolls back the rows and deletes the files already copied. No
symbolic link is followed; a file that cannot be imported (a link, an unreadable image)
is skipped and reported, or refuses the whole import when strict.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import unicodedata
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone as django_timezone
from PIL import Image

from data_access.models import Theme, ThemeImage
from data_access.selectors import theme_not_found
from data_access.services._values import json_safe
from tuning.errors import DataError, ThemeError
from tuning.tracking.names import theme_name_problem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Formats Pillow may detect: a file named .png that is really a GIF is refused.
PIL_FORMATS = ("PNG", "JPEG", "BMP")
ACCEPTED_MODES = {"L": "grayscale", "RGB": "RGB", "RGBA": "RGBA"}
NAME_MAX_LENGTH = Theme._meta.get_field("name").max_length
LABEL_MAX_LENGTH = ThemeImage._meta.get_field("label").max_length
# Categories no class name may hold: control and format characters (a newline, a NUL, a
# right-to-left override), lone surrogates, line and paragraph separators.
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
STORED_STEM_MAX_BYTES = 200
IMAGE_FIX = (
    "replace or delete the file; accepted: .png, .jpg, .jpeg or .bmp files in "
    "grayscale, RGB or RGBA."
)


@dataclass(frozen=True)
class _Item:
    label: str
    filename: str
    source: Path | bytes


def theme_import_folder(*, directory: str | os.PathLike[str], name: str,
                        description: str = "", strict: bool = True,
                        on_skip: Callable[[DataError], None] | None = None,
                        on_ignore: Callable[[str], None] | None = None) -> Theme:
    """Import an ImageFolder tree: one sub-folder per class, images anywhere below it.

    Files with other extensions and hidden files are ignored; a hidden folder where the
    class folders lie (`.git`, but also `...`) is passed to on_ignore as one line, as it
    may be a class the user meant to import. A symbolic link, an image
    outside every class folder and an image Pillow cannot use are skipped, each passed
    to on_skip, unless strict: then the first one raises DataError. Raises ThemeError
    for a missing or badly shaped folder, a bad class folder name or a taken name. When
    it raises, nothing is written."""
    root = Path(directory).expanduser().absolute()
    name = _check_new_name(name)
    skips = _Skips(strict=strict, on_skip=on_skip, on_ignore=on_ignore)
    labels, items = _scan_image_folder(root, skips)
    items = _usable_images(root, items, skips)
    _check_every_class_has_images(root, labels, items, skipped=skips.count)
    return _write_theme(name=name, description=description, items=items)


def theme_import_demo(*, name: str = "digits_demo") -> Theme:
    """The demo theme: scikit-learn's bundled 1,797 handwritten digits (8x8, classes 0-9),
    written as grayscale PNGs. Needs no download."""
    # Imported here: scikit-learn is slow to import and only this function needs it.
    import numpy as np
    from sklearn.datasets import load_digits

    name = _check_new_name(name)
    digits = load_digits()
    # The digits are 0..16 ink levels; stretch them to the full 8-bit range.
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    items = []
    for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        buffer = io.BytesIO()
        # A 2-D uint8 array becomes a grayscale (mode L) image.
        Image.fromarray(image).save(buffer, format="PNG")
        items.append(_Item(label=str(int(target)), filename=f"{index:04d}.png",
                           source=buffer.getvalue()))
    description = ("scikit-learn's handwritten digits (load_digits): 1,797 grayscale "
                   "8x8 images, classes 0-9.")
    return _write_theme(name=name, description=description, items=items)


def theme_delete(*, theme_id: int) -> None:
    """Delete a theme, its image rows and, once the deletion is committed, its files.

    Raises django.db.models.ProtectedError when studies still refer to the theme."""
    with transaction.atomic():
        theme = Theme.objects.filter(pk=theme_id).first()
        if theme is None:
            raise theme_not_found(theme_id)
        names = list(theme.images.values_list("image", flat=True))
        theme.delete()
        # Files go only after the commit: a rolled-back delete must keep them.
        transaction.on_commit(lambda: _delete_files(names))


def theme_set_default_params(*, theme_id: int, params: dict[str, Any],
                             study_id: int | None = None) -> None:
    """Save params.yaml values (nested) that prefill the theme's next study."""
    updated = Theme.objects.filter(pk=theme_id).update(
        default_params=json_safe(params), default_params_study_id=study_id,
        updated_at=django_timezone.now())
    if not updated:
        raise theme_not_found(theme_id)


def require_theme(theme_id: int) -> None:
    """Raise ThemeError unless the theme exists (for a write that refers to it)."""
    if not Theme.objects.filter(pk=theme_id).exists():
        raise theme_not_found(theme_id)


def _check_new_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ThemeError("The theme name must not be empty.", fix="pass --name NAME.")
    if len(name) > NAME_MAX_LENGTH:
        raise ThemeError(
            f"The theme name must be at most {NAME_MAX_LENGTH} characters "
            f"(got {len(name)}).", fix="pass a shorter --name.",
        )
    problem = theme_name_problem(name)
    if problem is not None:   # MLflow would refuse it when the theme's first study ends
        raise ThemeError(f"The theme name {problem} (got {name!r}).",
                         fix="pass another --name.")
    existing = Theme.objects.filter(name=name).values_list("id", flat=True).first()
    if existing is not None:
        raise ThemeError(
            f"A theme named '{name}' already exists (id {existing}).",
            fix=f"use it with --theme-id {existing}, or import under another --name.",
        )
    return name


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image_name(name: str) -> bool:
    return _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as one line of valid text, for messages: bytes that are not UTF-8 appear as
    \\xNN and control characters escaped, so that a newline in a name cannot forge a line."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


class _Skips:
    """Files left out of an import: each refuses it when strict, else is reported."""

    def __init__(self, *, strict: bool, on_skip: Callable[[DataError], None] | None,
                 on_ignore: Callable[[str], None] | None = None):
        self.strict = strict
        self.on_skip = on_skip
        self.on_ignore = on_ignore
        self.count = 0

    def ignore(self, notice: str) -> None:
        """Left out by rule, never refused: only told."""
        if self.on_ignore is not None:
            self.on_ignore(notice)

    def skip(self, error: DataError) -> None:
        if self.strict:
            raise error
        self.count += 1
        if self.on_skip is not None:
            self.on_skip(error)


def _link_error(path: Path) -> DataError:
    return DataError(
        f"symbolic links are not followed (got a link to {shown_path(os.readlink(path))}).",
        file=shown_path(path), fix="copy the files into the folder instead of linking them.")


def _scan_image_folder(root: Path, skips: _Skips) -> tuple[list[str], list[_Item]]:
    """The class labels and the image files below them, not yet opened."""
    class_dirs = _class_folders(root, skips)
    labels = _class_labels(class_dirs)
    items: list[_Item] = []
    for class_dir, label in zip(class_dirs, labels, strict=True):
        items.extend(_Item(label=label, filename=_stored_name(path.name), source=path)
                     for path in _images_below(class_dir, skips))
    return labels, items


def _class_folders(root: Path, skips: _Skips) -> list[Path]:
    shown = shown_path(root)
    fix_layout = (f"put each class's images in its own sub-folder of {shown}, "
                  f"e.g. {shown}/cat/001.png and {shown}/dog/001.png.")
    if not root.exists():
        raise ThemeError(f"Directory {shown} does not exist.", fix=fix_layout)
    if not root.is_dir():
        raise ThemeError(f"{shown} is not a directory.", fix=fix_layout)
    try:
        everything = sorted(root.iterdir())
    except OSError as exc:
        raise ThemeError(f"Directory {shown} cannot be read: {exc.strerror}.",
                         fix="make it readable by this user.") from exc
    entries = [entry for entry in everything if _visible(entry.name)]
    for hidden in everything:
        if not _visible(hidden.name) and not hidden.is_symlink() and hidden.is_dir():
            skips.ignore(f"ignored the hidden folder {shown_path(hidden)}: a name that starts "
                         f"with '.' is not a class folder (rename it to import its images).")
    links = [e for e in entries if e.is_symlink()]
    folders = [e for e in entries if not e.is_symlink() and e.is_dir()]
    loose = [e for e in entries if not e.is_symlink() and e.is_file() and _is_image_name(e.name)]
    if not folders:
        found = f" ({len(loose)} image(s) lie directly in it)" if loose else ""
        raise ThemeError(f"Directory {shown} has no class sub-folders{found}.",
                         fix=fix_layout)
    for link in links:
        skips.skip(_link_error(link))
    for image in loose:
        # An image outside every class folder has no label.
        skips.skip(DataError("images must lie in a class sub-folder, not in the theme folder.",
                             file=shown_path(image), fix=fix_layout))
    return folders


def _class_labels(class_dirs: list[Path]) -> list[str]:
    """One label per class folder: its name in NFC form, refused unless it is clean text."""
    labels = []
    by_label: dict[str, Path] = {}
    for folder in class_dirs:
        label = unicodedata.normalize("NFC", folder.name)
        problem = _label_problem(label)
        if problem is not None:
            raise ThemeError(f"class folder names {problem} (got '{shown_path(folder.name)}').",
                             file=shown_path(folder), fix="rename the folder.")
        if label in by_label:
            # macOS writes names decomposed (NFD), Linux as typed: "é" can be either.
            raise ThemeError(
                f"class folder names must differ after Unicode normalization (NFC); "
                f"{shown_path(by_label[label])} has the same name (got '{label}').",
                file=shown_path(folder), fix="merge the two folders or rename one.")
        by_label[label] = folder
        labels.append(label)
    return labels


def _label_problem(label: str) -> str | None:
    """Why a class name cannot be a label (kept in the database, shown on web pages)."""
    if any(unicodedata.category(ch) == "Cs" for ch in label):
        return "must be valid UTF-8 text"
    if any(unicodedata.category(ch) in FORBIDDEN_CATEGORIES for ch in label):
        return "must not contain control or formatting characters"
    if "\\" in label:
        # Django's storage reads a backslash as a folder separator.
        return "must not contain a backslash"
    if label != label.strip():
        return "must not be blank or start or end with spaces"
    if len(label) > LABEL_MAX_LENGTH:
        return f"must be at most {LABEL_MAX_LENGTH} characters"
    return None


def _stored_name(name: str) -> str:
    """The file name under MEDIA_ROOT: valid one-line text, and short enough that Django's
    "_abc1234" suffix for a taken name still fits the file system's 255 bytes."""
    text = unicodedata.normalize("NFC", name)
    text = "".join(ch if ch.isprintable() and ch != "\\" else "_" for ch in text)
    stem, dot, extension = text.rpartition(".")
    stem = stem.encode("utf-8")[:STORED_STEM_MAX_BYTES].decode("utf-8", "ignore")
    return f"{stem}{dot}{extension}"


def _images_below(class_dir: Path, skips: _Skips) -> list[Path]:
    found = []

    def unreadable(exc: OSError) -> None:
        skips.skip(DataError(f"folder cannot be read: {exc.strerror}.",
                             file=shown_path(exc.filename or class_dir),
                             fix="make it readable by this user."))

    # No links are followed: a link can lead back up the tree (a loop, or images seen
    # twice under another class) or out of it.
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=unreadable):
        folder = Path(dirpath)
        visible = sorted(d for d in dirnames if _visible(d))
        dirnames[:] = [d for d in visible if not (folder / d).is_symlink()]
        for name in sorted(set(visible) - set(dirnames)):
            skips.skip(_link_error(folder / name))
        for name in sorted(filenames):
            path = _image_file(folder / name, skips)
            if path is not None:
                found.append(path)
    return found


def _image_file(path: Path, skips: _Skips) -> Path | None:
    """The path if it names a regular image file; a link is skipped whatever its name."""
    if not _visible(path.name):
        return None
    try:
        mode = path.lstat().st_mode
    except OSError as exc:  # gone since the folder was listed, or not ours to read
        skips.skip(DataError(f"cannot be read: {exc.strerror}.", file=shown_path(path),
                             fix=IMAGE_FIX))
        return None
    if stat.S_ISLNK(mode):
        skips.skip(_link_error(path))
        return None
    if not _is_image_name(path.name):
        return None
    if not stat.S_ISREG(mode):
        # Opening a named pipe would wait forever for a writer.
        skips.skip(DataError("images must be regular files (got a pipe, socket or device).",
                             file=shown_path(path), fix=IMAGE_FIX))
        return None
    return path


def _image_problem(path: Path) -> str | None:
    """Why Pillow cannot use this file, or None when it decodes fully."""
    try:
        with warnings.catch_warnings():
            # A size past the limit is refused below, naming the file; the warning
            # Pillow prints on its own would only add lines.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=PIL_FORMATS) as image:
                problem = _header_problem(image)
                if problem is None:
                    # load() decodes every pixel: a truncated file fails here, not in a trial.
                    image.load()
    except Image.UnidentifiedImageError:
        return "not a PNG, JPEG or BMP image"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        text = str(exc).strip().splitlines()
        return shown_path(text[0]) if text else type(exc).__name__
    return problem


def _header_problem(image: Image.Image) -> str | None:
    """What the header alone rules out, before a single pixel is decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        # A small file can declare a huge size: decoding it would take all the memory.
        return (f"{image.width}x{image.height} pixels is over Pillow's limit of {limit} "
                f"pixels against decompression bombs")
    if image.mode not in ACCEPTED_MODES:
        return f"pixel mode {image.mode} is not grayscale (L), RGB or RGBA"
    return None


def _usable_images(root: Path, items: list[_Item], skips: _Skips) -> list[_Item]:
    problems = [(item, _image_problem(item.source)) for item in items]
    bad = [(item, problem) for item, problem in problems if problem is not None]
    if bad and skips.strict:
        item, problem = bad[0]
        more = (f" {len(bad) - 1} more of the {len(items)} images in {shown_path(root)} "
                f"cannot be used either." if len(bad) > 1 else "")
        raise DataError(f"cannot be used as an image: {problem}.{more}",
                        file=shown_path(item.source), fix=IMAGE_FIX)
    for item, problem in bad:
        skips.skip(DataError(f"cannot be used as an image: {problem}.",
                             file=shown_path(item.source), fix=IMAGE_FIX))
    return [item for item, problem in problems if problem is None]


def _check_every_class_has_images(root: Path, labels: list[str], items: list[_Item], *,
                                  skipped: int) -> None:
    were_skipped = f"; {skipped} file(s) were skipped" if skipped else ""
    if not items:
        raise ThemeError(
            f"No images in {shown_path(root)} (looked for {', '.join(IMAGE_EXTENSIONS)} "
            f"files, any case, in {len(labels)} class folder(s){were_skipped}).",
            fix=f"put each class's images in its own sub-folder of {shown_path(root)}.")
    with_images = {item.label for item in items}
    empty = [label for label in labels if label not in with_images]
    if empty:
        # A class with no examples cannot be trained or tested: say so now rather
        # than as a strange error in the middle of a study.
        raise ThemeError(
            f"Class folder(s) without images in {shown_path(root)}: {', '.join(empty)}"
            f"{were_skipped}.", fix="add images to them or remove them.")


def _write_theme(*, name: str, description: str, items: Iterable[_Item]) -> Theme:
    theme = None
    try:
        with transaction.atomic():
            theme = Theme.objects.create(name=name, description=description)
            rows = [_copied_row(theme, item) for item in items]
            ThemeImage.objects.bulk_create(rows, batch_size=500)
    except BaseException as exc:
        # Also on Ctrl-C or a stop signal (the command turns one into an exception):
        # atomic() rolls the rows back, the copied files are ours to remove.
        if theme is not None and not _committed(theme.pk):
            _discard_theme_folder(theme.pk)
        if isinstance(exc, IntegrityError):
            # Another import took the name between our check and our insert.
            raise ThemeError(f"Could not create theme '{name}': {exc}.",
                             fix="import under another --name.") from exc
        raise
    return theme


def _copied_row(theme: Theme, item: _Item) -> ThemeImage:
    row = ThemeImage(theme=theme, label=item.label)
    if isinstance(item.source, bytes):
        row.image.save(item.filename, ContentFile(item.source), save=False)
    else:
        with item.source.open("rb") as handle:
            row.image.save(item.filename, File(handle), save=False)
    return row


def _committed(theme_id: int) -> bool:
    """Whether the theme's row exists: an exception can arrive just after the commit,
    and then the files belong to a real theme."""
    try:
        return Theme.objects.filter(pk=theme_id).exists()
    except DatabaseError:
        return False


def _discard_theme_folder(theme_id: int) -> None:
    # The whole folder, not a list of the files saved: a file whose save was cut short
    # by a signal is on disk but not yet on any list. The theme id is new, so nothing
    # else lives there.
    shutil.rmtree(default_storage.path(f"themes/{theme_id}"), ignore_errors=True)


def _delete_files(names: list[str]) -> None:
    folders = set()
    for name in names:
        default_storage.delete(name)
        folders.add(os.path.dirname(name))
    # Remove the folders the import created, deepest first, while they are empty.
    candidates = set()
    for folder in folders:
        while folder and folder != "themes":
            candidates.add(folder)
            folder = os.path.dirname(folder)
    for folder in sorted(candidates, key=lambda f: f.count("/"), reverse=True):
        path = default_storage.path(folder)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
