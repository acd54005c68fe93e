"""The one door to the model registry, for the study, predict.py and the web.

Which store: MLFLOW_TRACKING_URI when set, else config.yaml's mlflow.tracking_uri
(tracking_uri). Which model: a theme's best model is registered as `<theme>_model`
(model_name), and the version to use is the one the `champion` alias points at
(CHAMPION, champion_uri, champion). A study registers its best model as a new version
and moves the alias only when it beats the champion (register_best).

The web imports this module on every page: MLflow, which takes seconds to import, is
imported only by the functions that call it.
"""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tuning.errors import ThemetuneError, TrackingStoreError
from tuning.redact import redact_text
from tuning.tracking import names, retrying

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
CONFIG_KEY = "mlflow.tracking_uri"
# The registry lives in the tracking store unless MLflow's own setting says otherwise.
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
CHAMPION = "champion"
# Version tags that say what a version's value means, so that a later study only moves
# the alias when its value beats the champion's on the same metric and direction.
METRIC_TAG, DIRECTION_TAG, VALUE_TAG = "themetune.metric", "themetune.direction", "themetune.value"
# The same choice under the names a reader looks for (the web and docs/choosing-a-model.md),
# and the theme content it was measured on (tuning.data.keys.theme_content_hash): a
# champion of other content is rescored before it is compared (register_best).
SELECTION_METRIC_TAG, SELECTION_VALUE_TAG = "themetune.selection_metric", "themetune.selection_value"
THEME_HASH_TAG = "themetune.theme_content_hash"
# The chosen model's held-out figures (tuning.evaluation.held_out), one tag each.
TEST_METRIC_TAGS = {name: f"themetune.{name}"
                    for name in ("test_acc", "test_balanced_acc", "test_macro_f1")}


# ---------------------------------------------------------------- which store, which model


def tracking_uri(configured: str) -> str:
    """The store a study records to: MLFLOW_TRACKING_URI wins over config.yaml's."""
    return tracking_uri_from_env() or configured


def tracking_uri_from_env() -> str | None:
    return os.environ.get(TRACKING_URI_ENV) or None


def tracking_uri_key() -> str:
    """Where the store in use was set, for a message that tells the user what to fix."""
    return TRACKING_URI_ENV if tracking_uri_from_env() else CONFIG_KEY


def registry_uri(tracking_uri: str) -> str:
    return os.environ.get(REGISTRY_URI_ENV) or tracking_uri


# The name a study registers its theme's best model under: `<theme>_model`, whose
# theme names tracking.names keeps to what MLflow and a models:/ URI can carry.
model_name = names.registered_model_name


def champion_uri(model_name: str) -> str:
    return f"models:/{model_name}@{CHAMPION}"


def store_missing(tracking_uri: str) -> bool:
    """A SQLite store whose file does not exist: opening it would create an empty one."""
    prefix = "sqlite:///"
    return tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix):]).is_file()


# ---------------------------------------------------------------- is it a store at all

# The schemes MLflow keeps runs under (its tracking store registry), without plugins.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
KNOWN_SCHEMES = (*DATABASE_SCHEMES, "file", "http", "https", "databricks", "databricks-uc", "uc")
URI_FORMS = "sqlite:///mlflow.db, http(s)://HOST:PORT, postgresql://..., file:/PATH or a folder"
# Tables every MLflow store has had since the model registry came: without them a
# SQLite file is another application's database.
MLFLOW_TABLES = ("experiments", "runs", "registered_models", "model_versions",
                 "alembic_version")


def uri_problem(tracking_uri: str) -> str:
    """Why `tracking_uri` is no tracking URI MLflow knows ("" when it is one). Without a
    scheme it is a folder (MLflow's file store); "::x::" or "foo://bar" would be taken
    for a folder name, or fail deep inside MLflow."""
    shown = redact_text(tracking_uri)
    if not tracking_uri.strip():
        return "the tracking URI is empty"
    if ":" not in tracking_uri:
        return ""
    match = _SCHEME.match(tracking_uri)
    if match is None:
        return f"{shown!r} is not a tracking URI (use {URI_FORMS})"
    scheme = match.group(1)
    if len(scheme) == 1:
        return ""   # a Windows drive: C:\\mlruns
    base = scheme.split("+", 1)[0].lower()   # postgresql+psycopg2://...
    if base not in KNOWN_SCHEMES:
        return (f"{shown!r}: {scheme}: is not a scheme MLflow keeps runs in "
                f"(use {URI_FORMS})")
    if base in (*DATABASE_SCHEMES, "http", "https") and \
            not tracking_uri[len(scheme) + 1:].startswith("//"):
        return f"{shown!r} is not a {base} URL (use {URI_FORMS})"
    return ""


def check_readable(tracking_uri: str) -> None:
    """For a command that only reads (predict.py, the web's Try the model): the store is
    one that MLflow opens without writing to it, and a server answers within seconds.
    MLflow would create its tables in any SQLite file, upgrade an older store, and make
    a missing store folder; an unreachable server costs minutes of its retries. Raises
    TrackingStoreError (or TrackingUnreachableError for a server) with the cause."""
    problem = uri_problem(tracking_uri)
    if problem:
        raise TrackingStoreError(problem)
    if tracking_uri.startswith(("http://", "https://")):
        retrying.check_reachable(tracking_uri)
        return
    if tracking_uri.startswith("sqlite:"):
        path = _sqlite_file(tracking_uri)
        problem = "" if path is None else _sqlite_read_problem(path)
    elif tracking_uri.startswith("databricks"):
        pass   # `databricks` alone is MLflow's name for a workspace, not a folder
    elif ":" not in tracking_uri or tracking_uri.startswith("file:") or \
            len(tracking_uri.split(":", 1)[0]) == 1:
        problem = _folder_read_problem(_folder(tracking_uri))
    if problem:
        raise TrackingStoreError(problem)


def _sqlite_file(tracking_uri: str) -> Path | None:
    name = tracking_uri.removeprefix("sqlite:").removeprefix("///").split("?", 1)[0]
    return None if not name or name.startswith(":memory:") else Path(name).resolve()


def _folder(tracking_uri: str) -> Path:
    if tracking_uri.startswith("file:"):
        tracking_uri = tracking_uri[len("file:"):].removeprefix("//")
    return Path(tracking_uri).resolve()


def _sqlite_read_problem(path: Path) -> str:
    if path.is_dir():
        return f"{path} is a folder, not a SQLite file"
    if not path.exists():
        return f"no MLflow store at {path} (no such file)"
    if not path.is_file():
        return f"{path} is not a regular file"
    try:
        with path.open("rb") as f:
            head = f.read(16)
        if not head:
            return f"{path} is an empty file, not an MLflow store"
        if head != b"SQLite format 3\x00":
            return f"{path} is not a SQLite database, so not an MLflow store"
        # Read-only, by SQLite itself: nothing in the file can change here.
        with closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except (OSError, sqlite3.Error) as exc:
        return f"{path} cannot be read as a SQLite database ({exc})"
    missing = [t for t in MLFLOW_TABLES if t not in tables]
    if missing:
        return (f"{path} is a SQLite database without MLflow's tables "
                f"({', '.join(missing)}): not an MLflow store")
    older = _tables_mlflow_would_add(tables)
    if older:
        return (f"{path} is an MLflow store of an older MLflow version (no table "
                f"{', '.join(older[:3])}{', ...' if len(older) > 3 else ''}); MLflow would "
                f"upgrade it on opening, and a command that only reads does not (upgrade it "
                f"once with `mlflow db upgrade sqlite:///{path}`)")
    return ""


def _tables_mlflow_would_add(tables: set[str]) -> list[str]:
    """The tables of this MLflow's schema that the store lacks: MLflow would migrate it."""
    import mlflow.store.model_registry.dbmodels.models  # noqa: F401  (fills Base.metadata)
    import mlflow.store.tracking.dbmodels.models  # noqa: F401
    from mlflow.store.db.base_sql_model import Base

    return sorted(set(Base.metadata.tables) - tables)


def _folder_read_problem(path: Path) -> str:
    if not path.exists():
        return f"no MLflow store at {path} (no such folder)"
    if not path.is_dir():
        return f"{path} is a file, not an MLflow store folder"
    # A file store has its default experiment (0), its trash or its models folder.
    if not any((path / name).exists() for name in ("0", ".trash", "models")):
        return f"{path} is a folder without MLflow's files: not an MLflow store"
    return ""


# ---------------------------------------------------------------- the champion


@dataclass(frozen=True)
class Champion:
    tracking_uri: str
    model_name: str
    version: str
    source: str         # where the version's files are (its download URI)
    run_id: str

    @property
    def uri(self) -> str:
        return champion_uri(self.model_name)


def champion(*, tracking_uri: str, name: str) -> Champion | None:
    """The version the `champion` alias of model `name` points at now; None when the
    store, the model or the alias does not exist. Reads only, and never waits out an
    outage: raises TrackingStoreError when the store cannot be read."""
    if store_missing(tracking_uri):
        return None   # opening it would create an empty store: nothing to find
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        # Only an MLflow store MLflow would not write to, and a quick "no server" rather
        # than minutes of retries.
        check_readable(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri,
                              registry_uri=registry_uri(tracking_uri))
        try:
            registered = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = registered.aliases.get(CHAMPION)
        if version is None:
            return None
        found = client.get_model_version(name, str(version))
        source = client.get_model_version_download_uri(name, str(version))
    except (MlflowException, ThemetuneError) as exc:
        raise TrackingStoreError(first_line(exc)) from None
    return Champion(tracking_uri=tracking_uri, model_name=name, version=str(found.version),
                    source=source, run_id=found.run_id or "")


def first_line(exc: BaseException) -> str:
    # Our own error's message only: the caller names the key and the fix it fits.
    text = exc.message if isinstance(exc, ThemetuneError) else str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------- registering


@dataclass
class Registration:
    model_name: str
    version: str
    champion_version: str        # the version the alias points at after this study
    moved: bool                  # True when this study's version became the champion
    reason: str                  # why the alias moved or stayed, for the study's output
    # Which comparison was made, then both values: one line each, for the output.
    comparison: list[str] = field(default_factory=list)


def version_tags(*, metric: str, direction: str, value: float, theme_hash: str | None,
                 test_metrics: dict[str, float] | None) -> dict[str, str]:
    """What a registered version says about how it was chosen and how good it is."""
    tags = {METRIC_TAG: metric, DIRECTION_TAG: direction, VALUE_TAG: repr(float(value)),
            SELECTION_METRIC_TAG: metric, SELECTION_VALUE_TAG: repr(float(value))}
    if theme_hash:
        tags[THEME_HASH_TAG] = theme_hash
    for name, figure in (test_metrics or {}).items():
        if name in TEST_METRIC_TAGS:
            tags[TEST_METRIC_TAGS[name]] = repr(float(figure))
    return tags


def register_best(client, *, model_uri: str, model_name: str, tags: dict[str, str],
                  description: str, metric: str, direction: str, value: float,
                  theme_hash: str | None = None, test_metrics: dict[str, float] | None = None,
                  rescore=None) -> Registration:
    """Register the best model as a new version of `model_name` in the store the study
    set (runs.open_study_runs); move `champion` to it only when no champion exists or
    this value beats the champion's on the same metric and direction. `client` is the
    study's retrying client.

    When the champion was trained on other theme content than `theme_hash`, and
    `rescore` is given, the champion's value is `rescore(version)` (an object with
    `value`, None when it could not be scored, `split`, `images` and `problem`: see
    tuning.evaluation.rescoring) instead of its recorded one."""
    import mlflow

    # A resume that redoes a dead driver's bookkeeping may find its version already there.
    version = (_version_of_parent(client, model_name, tags.get("parent_run_id"))
               or retrying.call(mlflow.register_model, model_uri, model_name,
                                await_registration_for=60,
                                tags={**tags, **version_tags(
                                    metric=metric, direction=direction, value=value,
                                    theme_hash=theme_hash, test_metrics=test_metrics)}))
    number = str(version.version)
    client.update_model_version(model_name, number, description=description)
    client.update_registered_model(model_name, description=description)
    current = _champion_version(client, model_name)
    if current is not None and str(current.version) == number:
        # Redone bookkeeping of the study that made it champion.
        return Registration(model_name=model_name, version=number, champion_version=number,
                            moved=False, reason="already the champion")
    moved, reason, comparison = _compare(current, metric=metric, direction=direction,
                                         value=value, theme_hash=theme_hash, rescore=rescore)
    if moved:
        client.set_registered_model_alias(model_name, CHAMPION, number)
    return Registration(model_name=model_name, version=number,
                        champion_version=number if moved else str(current.version),
                        moved=moved, reason=reason, comparison=comparison)


def _version_of_parent(client, model_name: str, parent_run_id: str | None):
    """The version a study's parent run already registered, if any."""
    if not parent_run_id or "'" in model_name:   # a quote cannot go into the filter
        return None
    versions = retrying.call(client.search_model_versions, f"name = '{model_name}'")
    return next((v for v in versions if (v.tags or {}).get("parent_run_id") == parent_run_id),
                None)


def _champion_version(client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(exc).lower():
            raise
        return None


def _compare(current, *, metric: str, direction: str, value: float, theme_hash: str | None,
             rescore) -> tuple[bool, str, list[str]]:
    """(moves, reason, the comparison's lines): like with like. A champion of other
    theme content is rescored on this study's images when it can be."""
    if current is None:
        return True, "no champion yet", []
    tags = current.tags or {}
    if tags.get(METRIC_TAG) != metric or tags.get(DIRECTION_TAG) != direction:
        moved, reason = _beats(current, metric=metric, direction=direction, value=value)
        return moved, reason, []
    theirs_hash = tags.get(THEME_HASH_TAG)
    if not theme_hash or rescore is None or theirs_hash == theme_hash:
        how = ("same theme content" if theme_hash and theirs_hash == theme_hash
               else "no theme content to compare")
        moved, reason = _beats(current, metric=metric, direction=direction, value=value)
        return moved, reason, [f"champion comparison: recorded values ({how})",
                               f"champion comparison: {reason}"]
    changed = (f"champion version {current.version} was trained on other theme content "
               f"({_short(theirs_hash)}, this study {_short(theme_hash)})")
    scored = rescore(current)
    if scored.value is None:
        moved, reason = _beats(current, metric=metric, direction=direction, value=value)
        return moved, reason, [f"champion comparison: recorded values; {changed}, but "
                               f"{scored.problem}",
                               f"champion comparison: {reason}"]
    better = scored.value > value if direction == "minimize" else scored.value < value
    verdict = "beats" if better else "does not beat"
    reason = (f"{metric} {value:.4f} {verdict} champion version {current.version}'s "
              f"{scored.value:.4f} rescored on this study's {scored.split} split"
              + ("" if better else ": alias left in place"))
    return better, reason, [
        f"champion comparison: rescored; {changed}: its own model labelled this study's "
        f"{scored.split} split ({scored.images} images)",
        f"champion comparison: {metric} this study's best {value:.4f}, champion version "
        f"{current.version} rescored {scored.value:.4f} (recorded {tags.get(VALUE_TAG, '?')}"
        f"): {verdict}{'' if better else ', alias left in place'}"]


def _short(theme_hash: str | None) -> str:
    return f"hash {theme_hash[:12]}" if theme_hash else "no recorded hash"


def _beats(current, *, metric: str, direction: str, value: float) -> tuple[bool, str]:
    if current is None:
        return True, "no champion yet"
    tags = current.tags or {}
    if tags.get(METRIC_TAG) != metric or tags.get(DIRECTION_TAG) != direction:
        return False, (f"champion version {current.version} was chosen on "
                       f"{tags.get(DIRECTION_TAG, '?')} {tags.get(METRIC_TAG, '?')}, this "
                       f"study on {direction} {metric}: not comparable, alias left in place")
    try:
        theirs = float(tags[VALUE_TAG])
    except (KeyError, ValueError):
        return True, f"champion version {current.version} records no value"
    better = value > theirs if direction == "maximize" else value < theirs
    verdict = "beats" if better else "does not beat"
    return better, (f"{metric} {value:.4f} {verdict} champion version {current.version}'s "
                    f"{theirs:.4f}" + ("" if better else ": alias left in place"))
