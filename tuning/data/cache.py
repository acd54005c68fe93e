"""Writing cache entries so that each appears complete or not at all, and reading them
back, a damaged one being only a miss. Shared by the resident arrays (tuning.data.resident)
and the streaming shards (tuning.data.shards)."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ARRAYS_FILE = "data.npz"


def new_build_dir(root: Path, key: str) -> Path:
    """An empty folder under `root`, to fill and then `publish`."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root))


def publish(build: Path, folder: Path, marker: str) -> None:
    """Rename the filled `build` folder to `folder`; `marker` is the file that shows a
    published folder is whole."""
    try:
        os.rename(build, folder)
    except OSError:
        # Another process published the same key first; its content equals ours.
        if not (folder / marker).exists():
            raise


def store_arrays(cache_dir: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write cache_dir/key/data.npz so that the directory appears complete or not at all."""
    build = new_build_dir(cache_dir, key)
    try:
        # Uncompressed: loading 20k images must stay well under a second.
        np.savez(build / ARRAYS_FILE, **arrays)
        publish(build, cache_dir / key, ARRAYS_FILE)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz entry, or None if it is missing or damaged (then its folder
    is removed, to be rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        # A damaged entry (disk fault, manual edit) is only a cache miss: rebuild it.
        shutil.rmtree(path.parent, ignore_errors=True)
        return None


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def write_atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
