"""Cache keys: which preprocessed entry belongs to a theme and its settings.

An entry's key is a sha256 over the content of every image, its label, the
preprocessing settings and FORMAT_VERSION, so an entry can only be reused for identical
inputs.

Hashing every file on each launch costs a full read of the theme, so a second, cheaper
key over (path, inode, size, mtime, ctime, label) maps to the content key in
`<root>/by-stat/`. A warm start therefore only stats the files; any change to a file
changes its stat key and falls back to hashing, which still finds the content entry when
the bytes did not change (e.g. after a `touch` or a copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tuning.data.cache import read_text, write_atomic_text
from tuning.data.listing import listing
from tuning.data.settings import PreprocessSettings
from tuning.errors import DataError

# Bump whenever decoding or preprocessing changes what the arrays contain.
FORMAT_VERSION = 1
BY_STAT = "by-stat"


@dataclass(frozen=True)
class CacheKey:
    content: str      # names the entry
    stat: str         # names the by-stat file that points to it
    linked: bool      # found through the stat key: no file was hashed


def find_key(root: Path, paths: list[str], stats: list[os.stat_result | None],
             labels: np.ndarray, settings: PreprocessSettings) -> CacheKey:
    """The entry's key, through the stat key when a previous run recorded it."""
    by_stat = stat_key(paths, stats, labels, settings)
    known = read_text(root / BY_STAT / by_stat)
    return CacheKey(content=known or content_key(paths, labels, settings), stat=by_stat,
                    linked=known is not None)


def link(root: Path, key: CacheKey) -> None:
    """Record the stat key's entry, so that the next run with unchanged files hashes none."""
    write_atomic_text(root / BY_STAT / key.stat, key.content)


def stat_inside_root(paths: list[str], media_root: str) -> list[os.stat_result | None]:
    """Stat every file (None if missing) and refuse any whose real path leaves media_root."""
    root = os.path.realpath(media_root)
    prefix = root.rstrip(os.sep) + os.sep

    def inside(real: str) -> bool:
        return real == root or real.startswith(prefix)

    # realpath on every file costs one lstat per path component (0.7 s for 20k files);
    # resolving each directory once and lstat-ing only the file itself costs a tenth.
    dir_inside: dict[str, bool] = {}
    stats: list[os.stat_result | None] = []
    outside: list[str] = []
    for path in paths:
        directory, _, name = path.rpartition(os.sep)
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if (st is not None and stat.S_ISLNK(st.st_mode)) or name in ("", ".", ".."):
            ok = inside(os.path.realpath(path))
            try:
                st = os.stat(path)
            except OSError:
                st = None
        else:
            if directory not in dir_inside:
                dir_inside[directory] = inside(os.path.realpath(directory or os.curdir))
            ok = dir_inside[directory]
        if not ok:
            outside.append(path)
        stats.append(st)
    if outside:
        raise DataError(
            f"refused: images must lie inside the media root {root} (symlinks resolved); "
            f"{len(outside)} outside: {listing(outside)}.",
            fix="move the images under the media root or correct their paths in the database.")
    return stats


def settings_blob(settings: PreprocessSettings) -> bytes:
    return json.dumps({"format": FORMAT_VERSION, **asdict(settings)}, sort_keys=True).encode()


def stat_key(paths, stats, labels, settings) -> str:
    h = hashlib.sha256(b"stat\0" + settings_blob(settings))
    for path, st, label in zip(paths, stats, labels.tolist()):
        if st is None:
            h.update(f"{path}\0missing\0{label}\n".encode())
        else:
            h.update(f"{path}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
                     f"\0{label}\n".encode())
    return h.hexdigest()


def content_key(paths, labels, settings) -> str:
    h = hashlib.sha256(b"content\0" + settings_blob(settings))
    for path, label in zip(paths, labels.tolist()):
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            digest = "unreadable"
        h.update(f"{digest}\0{label}\n".encode())
    return h.hexdigest()


def theme_content_hash(theme) -> str:
    """Which images, under which labels, a theme holds: the same files with the same
    class names give the same hash whatever their paths or order; any changed pixel,
    added or removed image or relabelling gives another. A study records it so that a
    later one can tell whether the theme changed since (champion rescoring, warm starts)."""
    rows = []
    for sample in theme.samples:
        try:
            with open(sample.path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            digest = "unreadable"
        rows.append(f"{digest}\0{theme.class_names[sample.label]}\n")
    h = hashlib.sha256(b"theme\0")
    for row in sorted(rows):
        h.update(row.encode())
    return h.hexdigest()
