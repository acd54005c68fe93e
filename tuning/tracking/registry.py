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
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import ThemetuneError, TrackingStoreError
from tuning.tracking import names, retrying

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
CONFIG_KEY = "mlflow.tracking_uri"
# The registry lives in the tracking store unless MLflow's own setting says otherwise.
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
CHAMPION = "champion"
# Version tags that say what a version's value means, so that a later study only moves
# the alias when its value beats the champion's on the same metric and direction.
METRIC_TAG, DIRECTION_TAG, VALUE_TAG = "themetune.metric", "themetune.direction", "themetune.value"


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
        retrying.check_reachable(tracking_uri)   # a quick "no server", not minutes of retries
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
    text = exc.one_line() if isinstance(exc, ThemetuneError) else str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------- registering


@dataclass
class Registration:
    model_name: str
    version: str
    champion_version: str        # the version the alias points at after this study
    moved: bool                  # True when this study's version became the champion
    reason: str                  # why the alias moved or stayed, for the study's output


def register_best(client, *, model_uri: str, model_name: str, tags: dict[str, str],
                  description: str, metric: str, direction: str,
                  value: float) -> Registration:
    """Register the best model as a new version of `model_name` in the store the study
    set (runs.open_study_runs); move `champion` to it only when no champion exists or
    this value beats the champion's on the same metric and direction. `client` is the
    study's retrying client."""
    import mlflow

    # A resume that redoes a dead driver's bookkeeping may find its version already there.
    version = (_version_of_parent(client, model_name, tags.get("parent_run_id"))
               or retrying.call(mlflow.register_model, model_uri, model_name,
                                await_registration_for=60,
                                tags={**tags, METRIC_TAG: metric, DIRECTION_TAG: direction,
                                      VALUE_TAG: repr(float(value))}))
    number = str(version.version)
    client.update_model_version(model_name, number, description=description)
    client.update_registered_model(model_name, description=description)
    current = _champion_version(client, model_name)
    moved, reason = _beats(current, metric=metric, direction=direction, value=value)
    if moved:
        client.set_registered_model_alias(model_name, CHAMPION, number)
    return Registration(model_name=model_name, version=number,
                        champion_version=number if moved else str(current.version),
                        moved=moved, reason=reason)


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
