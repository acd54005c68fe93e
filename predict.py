"""Label image files with a tuned model: one line per image (path, label, probability).

    python predict.py --model models:/digits_demo_model@champion photo.png folder/
    python predict.py --theme-id 7 folder/ --csv labels.csv

Only MLflow loads the model; the preprocessing it was trained with travels inside it.
An unreadable file is named on stderr, the others are still labelled, and the exit
code is 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
from pathlib import Path

from tuning.errors import PredictError, Reported, TrackingStoreError
from tuning.tracking import model_loading, registry

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
    """The files to label, in the order given (folders sorted), and the paths that are
    neither a file nor a folder."""
    files, missing = [], []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(f for f in path.rglob("*")
                                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(f"{path}: no such file or folder")
    return files, missing


def load_model(uri: str, store: str) -> model_loading.LoadedModel:
    """The model with the code it shipped with (tracking.model_loading)."""
    if registry.store_missing(store):
        # Opening a missing SQLite store would create an empty one, and then say the
        # model is not there: the store is what is wrong.
        raise PredictError(f"no MLflow store at {store}.", key="--tracking-uri",
                           fix="run predict.py where the study ran, or point "
                               "--tracking-uri / MLFLOW_TRACKING_URI at its store.")
    try:
        return model_loading.load_model(uri, tracking_uri=store)
    except TrackingStoreError as exc:
        raise PredictError(f"cannot load model {uri} from MLflow store {store} "
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
    try:
        store = tracking_uri(args.tracking_uri)
        uri = args.model or champion_of_theme(args.theme_id)
        files, problems = image_files(args.paths)
        if not files and not problems:
            raise PredictError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under "
                               f"{', '.join(map(str, args.paths))}.", fix="give image files "
                               "or folders that hold them.")
        model = load_model(uri, store)
        writer = _csv_writer(args.csv, model)
        for path, row, error in predict_files(model, files):
            if error is not None:
                problems.append(f"{path}: {error}")
                continue
            print(f"{path}\t{row['label']}\t{row['probability']:.4f}", flush=True)
            if writer is not None:
                writer.writerow([str(path), *row.tolist()])
    except Reported as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _csv_writer(path: Path | None, model):
    if path is None:
        return None
    classes = model.class_names
    try:
        handle = open(path, "w", newline="")
    except OSError as exc:
        raise PredictError(f"cannot write {path} ({exc.strerror}).", key="--csv",
                           fix="pick a writable path.") from None
    writer = csv.writer(handle)
    writer.writerow(["path", "label", "probability", *classes])
    return writer


if __name__ == "__main__":
    sys.exit(main())
