"""Label image files with a tuned model: one line per image (path, label, probability).

    python predict.py --model models:/digits_demo_model@champion photo.png folder/
    python predict.py --theme-id 7 folder/ --csv labels.csv

Only MLflow loads the model; the preprocessing it was trained with travels inside it.
An unreadable file is named on stderr, the others are still labelled, and the exit
code is 2. Every path is checked before the model loads: one that is neither a file
nor a folder is refused. In a folder, links and pipes are skipped with a warning.
The store is only read: predict.py refuses one MLflow would write to (tracking.registry).
A tab, newline or backslash in a file name is written as \\t, \\n or \\\\ (the CSV quotes
it instead).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import stat
import sys
from pathlib import Path

from tuning.errors import PredictError, Reported, ThemetuneError, TrackingStoreError
from tuning.redact import redact_text
from tuning.tracking import model_loading, registry, retrying

REPO = Path(__file__).resolve().parent
DEFAULT_CONFIG = REPO / "configs" / "config.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Files per predict call: bounds memory for folders of large photos.
BATCH = 64
UNREADABLE = "not a readable image file"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # launch.py's parser: a bad flag is one line and exit 2, as every user error is.
    from launch import OneLineParser, whole_number
    from tuning.config.params import MAX_ID

    p = OneLineParser(prog="predict.py", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="image files, or folders to search for them (recursively)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="URI",
                        help="an MLflow model URI, e.g. models:/NAME@champion or runs:/ID/model")
    source.add_argument("--theme-id", type=whole_number(1, MAX_ID),
                        help="use this theme's champion, models:/<theme name>_model@champion")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="also write path, label, probability and every class's "
                        "probability to this CSV file")
    p.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else "
                                          "mlflow.tracking_uri of configs/config.yaml)")
    return p.parse_args(argv)


def tracking_uri(given: str | None) -> str:
    if given:
        return given
    if registry.tracking_uri_from_env():   # it wins: config.yaml need not even exist
        return registry.tracking_uri(configured="")
    from tuning.config import load_infra_config

    return registry.tracking_uri(load_infra_config(DEFAULT_CONFIG).mlflow.tracking_uri)


def champion_of_theme(theme_id: int) -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    import django

    django.setup()
    from data_access.selectors import theme_get

    return registry.champion_uri(registry.model_name(theme_get(theme_id=theme_id).name))


def image_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The files to label, in the order given (folders sorted), and warnings for what a
    folder holds but is not labelled (links, pipes). Raises PredictError for a path that
    is neither a file nor a folder: before the model loads, and never opening a pipe,
    which would wait for a writer."""
    files, warnings = [], []
    for path in paths:
        try:
            mode = path.stat().st_mode   # a link the user named is followed
        except OSError as exc:
            raise PredictError(f"{shown(path)}: {_why_missing(exc)}.", fix="give image files "
                               "or folders that hold them.") from None
        if stat.S_ISDIR(mode):
            files.extend(_folder_images(path, warnings))
        elif stat.S_ISREG(mode):
            files.append(path)
        else:
            raise PredictError(f"{shown(path)} is {_kind(mode)}, not an image file.",
                               fix="give image files or folders that hold them (copy "
                                   "what the pipe or device gives into a file first).")
    return files, warnings


def _why_missing(exc: OSError) -> str:
    if exc.errno == 2 and not exc.filename2:
        return "no such file or folder"
    return f"cannot be read ({exc.strerror or exc})"


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _folder_images(folder: Path, warnings: list[str]) -> list[Path]:
    """The image files below `folder`, sorted; links and other non-regular files are not
    followed, as import_theme does (a link may lead out of the folder, a pipe blocks)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                warnings.append(_link_warning(here / name))
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
        for name in filenames:
            path = here / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                mode = path.lstat().st_mode
            except OSError:
                continue   # gone since the folder was listed
            if stat.S_ISLNK(mode):
                warnings.append(_link_warning(path))
            elif stat.S_ISREG(mode):
                found.append(path)
            else:
                warnings.append(f"{shown(path)}: skipped: {_kind(mode)}, not an image file")
    return sorted(found)


def _link_warning(path: Path) -> str:
    return (f"{shown(path)}: skipped: symbolic links in a folder are not followed (a link "
            f"to {shown(Path(os.readlink(path)))}); give the file itself to label it")


def shown(path: Path) -> str:
    """A path as one tab-separated field on one line: backslash, tab, newline and
    carriage return escaped (\\\\, \\t, \\n, \\r), bytes that are not UTF-8 as \\xNN."""
    text = str(path).translate(_ESCAPES)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def check_store(uri: str, store: str, *, given: str | None) -> None:
    """The store can be read without writing to it (tracking.registry.check_readable):
    a missing SQLite file is not created, another application's database gets no MLflow
    tables, and a server that does not answer is given up on within seconds."""
    if not uri.startswith(model_loading.STORE_SCHEMES):
        return   # a model folder: read without the store
    try:
        registry.check_readable(store)
    except ThemetuneError as exc:
        raise PredictError(f"MLflow store {redact_text(store)}: {exc.message.rstrip('.')}.",
                           key="--tracking-uri" if given else registry.tracking_uri_key(),
                           fix="run predict.py where the study ran, or point "
                               "--tracking-uri / MLFLOW_TRACKING_URI at its store.") from None


def load_model(uri: str, store: str) -> model_loading.LoadedModel:
    """The model with the code it shipped with (tracking.model_loading)."""
    try:
        return model_loading.load_model(uri, tracking_uri=store)
    except TrackingStoreError as exc:
        raise PredictError(f"cannot load model {uri} from MLflow store {redact_text(store)} "
                           f"({exc.message}).", key="--model",
                           fix=f"check the URI (e.g. {registry.champion_uri('NAME')}) "
                               "and --tracking-uri / MLFLOW_TRACKING_URI.") from None


def predict_files(model: model_loading.LoadedModel, files: list[Path]):
    """Yield (path, row or None, error or None) per file, batch by batch."""
    import pandas as pd

    # The model's own error class: its shipped code is not this checkout's.
    UnreadableImageError = model.unreadable_error  # noqa: N806

    for start in range(0, len(files), BATCH):
        batch = files[start:start + BATCH]
        cells, readable = [], []
        for path in batch:
            try:
                cells.append(path.read_bytes())
                readable.append(path)
            except OSError as exc:
                yield path, None, f"cannot read ({exc.strerror or exc})"
        if not cells:   # no file of the batch could be read: nothing to ask the model
            continue
        try:
            frame = model.predict(pd.DataFrame({"image": cells}))
        except UnreadableImageError:
            # Find the culprits one by one; the batch's good files still get labels.
            for path, cell in zip(readable, cells):
                try:
                    alone = model.predict(pd.DataFrame({"image": [cell]}))
                except UnreadableImageError:
                    yield path, None, UNREADABLE
                else:
                    yield _answer(model, path, alone.iloc[0])
            continue
        for path, (_, row) in zip(readable, frame.iterrows()):
            yield _answer(model, path, row)


def _answer(model: model_loading.LoadedModel, path: Path, row):
    row, error = model.split_row(row)
    return (path, None, UNREADABLE) if error else (path, row, None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(signal, "SIGPIPE"):
        # `predict.py ... | head`: a closed pipe ends the listing, not a traceback.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    retrying.bound_retries_for_reading()
    problems: list[str] = []
    try:
        store = tracking_uri(args.tracking_uri)
        files, warnings = image_files(args.paths)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if not files:
            raise PredictError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under "
                               f"{', '.join(shown(p) for p in args.paths)}.",
                               fix="give image files or folders that hold them.")
        uri = args.model or champion_of_theme(args.theme_id)
        check_store(uri, store, given=args.tracking_uri)
        writer = _csv_writer(args.csv)
        model = load_model(uri, store)
        if writer is not None:
            writer.writerow(["path", "label", "probability", *model.class_names])
        for path, row, error in predict_files(model, files):
            if error is not None:
                problems.append(f"{shown(path)}: {error}")
                continue
            print(f"{shown(path)}\t{row['label']}\t{row['probability']:.4f}", flush=True)
            if writer is not None:
                writer.writerow([str(path), *row.tolist()])
    except Reported as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _csv_writer(path: Path | None):
    """Opened before the model loads: an unwritable path is told at once. Fields with a
    comma, quote or line break are quoted; a name's bytes are written as they are."""
    if path is None:
        return None
    try:
        handle = open(path, "w", newline="", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise PredictError(f"cannot write {shown(path)} ({exc.strerror}).", key="--csv",
                           fix="pick a writable path.") from None
    return csv.writer(handle)


if __name__ == "__main__":
    sys.exit(main())
