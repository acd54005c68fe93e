"""Themes: import (an ImageFolder tree, or the demo digits), delete, default params.

Imports are all or nothing: every image is checked before anything is written, and a
failure while writing rolls back the rows and deletes the files already copied.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone as django_timezone
from PIL import Image

from data_access.models import Theme, ThemeImage
from data_access.selectors import theme_not_found
from data_access.services._values import json_safe
from tuning.errors import DataError, ThemeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Formats Pillow may detect: a file named .png that is really a GIF is refused.
PIL_FORMATS = ("PNG", "JPEG", "BMP")
ACCEPTED_MODES = {"L": "grayscale", "RGB": "RGB", "RGBA": "RGBA"}
NAME_MAX_LENGTH = Theme._meta.get_field("name").max_length
LABEL_MAX_LENGTH = ThemeImage._meta.get_field("label").max_length
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
                        description: str = "") -> Theme:
    """Import an ImageFolder tree: one sub-folder per class, images anywhere below it.

    Files with other extensions and hidden files are ignored. Raises ThemeError for a
    missing or badly shaped folder or a taken name, DataError for an image Pillow
    cannot read; in both cases nothing is written."""
    root = Path(directory).expanduser().absolute()
    name = _check_new_name(name)
    items = _scan_image_folder(root)
    _verify_images(root, items)
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
    existing = Theme.objects.filter(name=name).values_list("id", flat=True).first()
    if existing is not None:
        raise ThemeError(
            f"A theme named '{name}' already exists (id {existing}).",
            fix=f"use it with --theme-id {existing}, or import under another --name.",
        )
    return name


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _scan_image_folder(root: Path) -> list[_Item]:
    fix_layout = (f"put each class's images in its own sub-folder of {root}, "
                  f"e.g. {root}/cat/001.png and {root}/dog/001.png.")
    if not root.exists():
        raise ThemeError(f"Directory {root} does not exist.", fix=fix_layout)
    if not root.is_dir():
        raise ThemeError(f"{root} is not a directory.", fix=fix_layout)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p.name))
    if not class_dirs:
        raise ThemeError(f"Directory {root} has no class sub-folders.", fix=fix_layout)

    items: list[_Item] = []
    empty: list[str] = []
    for class_dir in class_dirs:
        label = class_dir.name
        if len(label) > LABEL_MAX_LENGTH:
            raise ThemeError(
                f"Class folder names must be at most {LABEL_MAX_LENGTH} characters: "
                f"{class_dir}.", fix="rename the folder.",
            )
        found = _images_below(class_dir)
        if not found:
            empty.append(label)
        items.extend(_Item(label=label, filename=p.name, source=p) for p in found)
    if not items:
        raise ThemeError(
            f"No images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files, any "
            f"case, in {len(class_dirs)} class folder(s)).", fix=fix_layout,
        )
    if empty:
        # A class with no examples cannot be trained or tested: say so now rather
        # than as a strange error in the middle of a study.
        raise ThemeError(
            f"Class folder(s) without images in {root}: {', '.join(empty)}.",
            fix="add images to them or remove them.",
        )
    return items


def _images_below(class_dir: Path) -> list[Path]:
    found = []
    # followlinks: datasets are often assembled from symlinked folders.
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for filename in sorted(filenames):
            if _visible(filename) and filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / filename)
    return found


def _image_problem(path: Path) -> str | None:
    """Why Pillow cannot use this file, or None when it decodes fully."""
    try:
        with Image.open(path, formats=PIL_FORMATS) as image:
            mode = image.mode
            # load() decodes every pixel: a truncated file fails here, not in a trial.
            image.load()
    except Image.UnidentifiedImageError:
        return "not a PNG, JPEG or BMP image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    if mode not in ACCEPTED_MODES:
        return f"pixel mode {mode} is not grayscale (L), RGB or RGBA"
    return None


def _verify_images(root: Path, items: list[_Item]) -> None:
    problems = []
    for item in items:
        problem = _image_problem(item.source)
        if problem is not None:
            problems.append((item.source, problem))
    if not problems:
        return
    path, problem = problems[0]
    more = (f" {len(problems) - 1} more of the {len(items)} images in {root} cannot be "
            f"used either." if len(problems) > 1 else "")
    raise DataError(f"cannot be used as an image: {problem}.{more}", file=str(path),
                    fix=IMAGE_FIX)


def _write_theme(*, name: str, description: str, items: Iterable[_Item]) -> Theme:
    saved: list[str] = []
    try:
        with transaction.atomic():
            theme = Theme.objects.create(name=name, description=description)
            rows = []
            for item in items:
                row = ThemeImage(theme=theme, label=item.label)
                if isinstance(item.source, bytes):
                    row.image.save(item.filename, ContentFile(item.source), save=False)
                else:
                    with item.source.open("rb") as handle:
                        row.image.save(item.filename, File(handle), save=False)
                saved.append(row.image.name)
                rows.append(row)
            ThemeImage.objects.bulk_create(rows, batch_size=500)
    except IntegrityError as exc:
        _delete_files(saved)
        # Another import took the name between our check and our insert.
        raise ThemeError(f"Could not create theme '{name}': {exc}.",
                         fix="import under another --name.") from exc
    except BaseException:
        # Rows are rolled back by atomic(); the copied files are ours to remove.
        _delete_files(saved)
        raise
    return theme


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
