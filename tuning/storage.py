"""Tune's storage and the other places a study keeps files or names a database.

ray.storage_path may be a local or NFS folder or a URI (s3://, gs://, ...): files there
go through pyarrow's filesystems, as Tune's own do. Every module that reads or writes
there, or turns a relative SQLite URL into an absolute one, comes here.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import urlparse


def is_remote_storage(storage_path: str) -> bool:
    """s3://, gs://, abfs://, hdfs://...: storage that no node holds locally."""
    scheme = urlparse(storage_path).scheme
    return len(scheme) > 1 and scheme != "file"   # one letter: a Windows drive


def local_storage_path(storage_path: str) -> Path:
    """The folder that run_study gives Tune, resolved as it does (against the cwd)."""
    if storage_path.startswith("file://"):
        storage_path = urlparse(storage_path).path
    return Path(storage_path).resolve()


def storage_root(storage_path: str) -> str:
    """ray.storage_path as Tune gets it: a URI as given, a local folder made absolute."""
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).resolve())


def experiment_folder_name(study_name: str, stamp: str) -> str:
    # The study name becomes a folder name: no "/" or spaces from --study-name.
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', study_name)[:80]}-{stamp}"


def absolute_url(url: str | None) -> str | None:
    """sqlite:///relative.db -> sqlite:////abs/relative.db, so that a resume (or a
    restored pickle) finds the same file from any working directory."""
    if url is None or not url.startswith("sqlite:///"):
        return url
    path = url[len("sqlite:///"):]
    if not path or path.startswith("/") or path.startswith(":memory:"):
        return url
    return "sqlite:///" + str(Path(path).resolve())


def journal_path(url: str) -> str | None:
    """The file of an Optuna journal storage (`journal:PATH`, or a path ending in .log,
    .jsonl or .journal); None for a database URL."""
    if url.startswith("journal:"):
        return url[len("journal:"):].removeprefix("//")
    if "://" not in url and url.endswith((".log", ".jsonl", ".journal")):
        return url
    return None


def filesystem(path: str):
    """(pyarrow filesystem, path on it) for a local path or a storage URI."""
    import pyarrow.fs

    if is_remote_storage(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path.removeprefix("file://")))


def read_bytes(path: str) -> bytes:
    fs, fs_path = filesystem(path)
    with fs.open_input_stream(fs_path) as f:
        return f.readall()


def read_on_storage(storage_path: str, fs_path: str) -> bytes:
    """A file that Tune names by its path on the storage's own filesystem ("bucket/key"
    on S3, a plain path on a local disk)."""
    fs, _ = filesystem(storage_path)
    with fs.open_input_stream(fs_path) as f:
        return f.readall()


def write_bytes(path: str, data: bytes) -> None:
    """Whole or not at all: written beside, then moved over (a rename on a local disk)."""
    fs, fs_path = filesystem(path)
    parent, name = fs_path.rsplit("/", 1)
    tmp = f"{parent}/.{name}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, fs_path)


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, fs_path = filesystem(path)
    return fs.get_file_info(fs_path).type != pyarrow.fs.FileType.NotFound


def make_folder(path: str) -> None:
    fs, fs_path = filesystem(path)
    fs.create_dir(fs_path)


def torch_load(data: bytes):
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
