"""Tune's storage and the other places a study keeps files or names a database.

ray.storage_path may be a local or NFS folder or a URI (s3://, gs://, ...): files there
go through pyarrow's filesystems, as Tune's own do. Every module that reads or writes
there, or turns a relative SQLite URL into an absolute one, comes here.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import urlparse

from tuning.errors import StorageError
from tuning.redact import redact_text
from tuning.tracking import registry


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


def remove_folder_on_storage(storage_path: str, fs_path: str) -> int:
    """Delete a folder Tune names by its path on the storage's filesystem (as
    read_on_storage); returns the bytes it held. A folder already gone frees nothing."""
    import pyarrow.fs

    fs, _ = filesystem(storage_path)
    if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
        return 0
    files = fs.get_file_info(pyarrow.fs.FileSelector(fs_path, recursive=True))
    size = sum(f.size or 0 for f in files if f.type == pyarrow.fs.FileType.File)
    fs.delete_dir(fs_path)
    return size


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


# -- the checks a dry run makes, so that the run cannot fail on them after Ray started ----
# Light on purpose (no Optuna, MLflow or torch): launch.py runs them before those load.

# TuningStudy.optuna_study_name holds 200 characters (data_access/models.py; Optuna's
# own column 512): a longer name would fail the study's record after Ray started.
MAX_STUDY_NAME_LENGTH = 200
SQLITE_HEADER = b"SQLite format 3\x00"


def check_study_places(config, *, study_name: str | None, storage_url: str | None) -> None:
    """The study's name, its Optuna storage and its local MLflow store can all be used
    (prepare_study's checks that need none of Optuna, MLflow or torch loaded)."""
    if study_name:
        check_study_name(study_name)
    else:
        check_study_name(config.study.name, file=str(config.files.optuna_params),
                         key="study.name")
    check_storage_url(storage_url)
    tracking_uri = registry.tracking_uri(config.infra.mlflow.tracking_uri)
    check_tracking_store(tracking_uri, config_file=str(config.files.config))


def check_study_name(name: str, *, file: str | None = None, key: str = "--study-name"
                     ) -> None:
    """A name that every store takes and every terminal prints as written."""
    if len(name) > MAX_STUDY_NAME_LENGTH:
        raise StorageError(f"the study name is {len(name)} characters long; at most "
                           f"{MAX_STUDY_NAME_LENGTH} fit the study records (got "
                           f"{name[:40]!r}...).", file=file, key=key,
                           fix=f"use a name of at most {MAX_STUDY_NAME_LENGTH} characters.")
    if not name.strip() or any(unicodedata.category(ch).startswith("C") for ch in name):
        raise StorageError(f"the study name must be printable text without control "
                           f"characters (got {name!r}).", file=file, key=key,
                           fix="use letters, digits, spaces and punctuation only.")


def check_storage_url(url: str | None) -> Path | None:
    """What can be told of an Optuna storage URL without opening it: its form, and that
    the folder of its file exists and is writable. Returns that file, if any."""
    if url is None:
        return None
    journal = journal_path(url)
    if journal is not None:
        path = Path(journal).expanduser().resolve()
        _check_storage_folder(path, "journal file")
        return path
    if "://" not in url:
        raise StorageError(f"storage {redact_text(url)!r} is neither a database URL nor a "
                           f"journal file.", key="--storage",
                           fix="use e.g. sqlite:///optuna.db, postgresql://..., or "
                               "journal:study.log.")
    sqlite_file = sqlite_path(absolute_url(url))
    if sqlite_file is not None:
        _check_storage_folder(sqlite_file, "SQLite file")
    return sqlite_file


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL; None for another URL or an in-memory database."""
    if not url.startswith("sqlite:///"):
        return None
    name = url[len("sqlite:///"):].split("?", 1)[0]
    return None if not name or name.startswith(":memory:") else Path(name).resolve()


def _check_storage_folder(path: Path, what: str) -> None:
    """The folder a storage file lives in exists and can be written: it is never made."""
    problem = _parent_problem(path)
    if problem:
        raise StorageError(f"the {what}'s {problem}.", key="--storage",
                           fix="create the folder (it is never made for you) or use another path.")


def check_tracking_store(tracking_uri: str, *, config_file: str | None = None) -> None:
    """A local MLflow store (SQLite file, file store) can be opened, or made, without
    making anything now: MLflow would otherwise make missing parent folders itself. A
    URI of no scheme MLflow knows ("::x::", "foo://bar") is refused before anything runs."""
    form = registry.uri_problem(tracking_uri)
    if form:
        from_env = registry.tracking_uri_from_env() is not None
        raise StorageError(f"MLflow store: {form}.", file=None if from_env else config_file,
                           key=registry.tracking_uri_key(),
                           fix="set a tracking URI MLflow knows, or unset "
                               f"{registry.TRACKING_URI_ENV} to use config.yaml's.")
    path = local_store_path(tracking_uri)
    if path is None:
        return   # a server (http, postgresql, databricks): checked when reached
    problem = (_sqlite_store_problem(path) if tracking_uri.startswith("sqlite:")
               else _folder_store_problem(path))
    if problem:
        from_env = registry.tracking_uri_from_env() is not None
        raise StorageError(
            f"MLflow store {tracking_uri}: {problem}.", file=None if from_env else config_file,
            key=registry.tracking_uri_key(),
            fix="create the folder (MLflow store folders are never made for you) or "
                "point the tracking URI at a writable place.")


def local_store_path(tracking_uri: str) -> Path | None:
    """The file or folder of a local tracking URI; None for a server or in-memory one."""
    if tracking_uri.startswith("sqlite:"):
        return sqlite_path(tracking_uri)
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri[len("file:"):].removeprefix("//")).resolve()
    scheme = tracking_uri.split(":", 1)[0] if ":" in tracking_uri else ""
    if len(scheme) > 1 or tracking_uri.startswith("databricks"):
        return None
    return Path(tracking_uri).resolve()


def _sqlite_store_problem(path: Path) -> str:
    if path.is_dir():
        return f"{path} is a folder, not a SQLite file"
    if not path.exists():
        return _parent_problem(path)
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    if head and head != SQLITE_HEADER:
        return f"{path} is not a SQLite database"
    return "" if os.access(path, os.W_OK) else f"{path} is read-only"


def _folder_store_problem(path: Path) -> str:
    if not path.exists():
        return _parent_problem(path)
    if not path.is_dir():
        return f"{path} is a file, not a store folder"
    return "" if os.access(path, os.W_OK | os.X_OK) else f"{path} is read-only"


def _parent_problem(path: Path) -> str:
    if not path.parent.is_dir():
        return f"folder {path.parent} does not exist"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"folder {path.parent} is read-only"
    return ""
