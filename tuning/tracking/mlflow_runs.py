"""MLflow, as the original system laid it out: experiment = theme, one parent run per
study, one child run `trial_{n}` per trial, only the best model registered.

Only the driver calls this module. Runs are addressed by id through MlflowClient; the
fluent API is used only around log_model, which needs an active run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import requests
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuning.storage import check_tracking_store
from tuning.tracking import output
from tuning.errors import StudyStoppedError, ThemetuneError
from tuning.numbers import is_finite_number
from tuning.redact import redact_text

log = output.log

PARENT_TAG = "mlflow.parentRunId"
MODEL_ARTIFACT = "model"
BEST_MODEL_ARTIFACT = "best_model"
# MLflow caps a param value at 6000 characters; longer ones fail the whole batch.
MAX_PARAM_LEN = 6000
BATCH_LIMIT = 100


def resolve_tracking_uri(configured: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


# -- an unreachable tracking server ------------------------------------------------------
# A tracking server that restarts or drops off the network for a while must not fail a
# study that has run for hours. Every MLflow call of the driver goes through call():
# while the server cannot be reached it waits and tries again every RETRY_EVERY_S, for
# up to THEMETUNE_MLFLOW_OUTAGE_S seconds (default 15 min) per outage. The driver (and
# with it Tune's event loop) waits; trials pause at their next report, so nothing is
# lost. MLflow's own retries back off exponentially up to 2 min apart (~4 min in all
# with its defaults): shortened here, unless set by the user, so that the driver goes
# on within seconds of the server's return.
OUTAGE_ENV = "THEMETUNE_MLFLOW_OUTAGE_S"
DEFAULT_OUTAGE_S = 900.0
RETRY_EVERY_S = 2.0
_MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                          "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class TrackingUnreachableError(ThemetuneError):
    """The MLflow tracking server does not answer when a study starts."""


class TrackingLostError(StudyStoppedError):
    """The tracking server stayed unreachable longer than the outage budget mid-study:
    the study stops, resumable once the server is back."""


# Set once an outage outlasted its budget: later calls (closing runs on the way out)
# try once instead of waiting out another budget each.
_gave_up: TrackingLostError | None = None


# Set while a stopped study closes its runs: a user who pressed Ctrl-C does not wait out
# an outage for it (the runs stay RUNNING, as --resume expects them).
_try_once = False


@contextlib.contextmanager
def without_waiting():
    """Calls inside try once and raise TrackingLostError at once if the server is away."""
    global _try_once
    previous, _try_once = _try_once, True
    try:
        yield
    finally:
        _try_once = previous


def outage_error() -> TrackingLostError | None:
    """The error of an outage that outlasted its budget, while the server stays away."""
    return _gave_up


def outage_budget_s() -> float:
    raw = os.environ.get(OUTAGE_ENV)
    try:
        return float(raw) if raw else DEFAULT_OUTAGE_S
    except ValueError:
        raise ThemetuneError(f"{OUTAGE_ENV} must be a number of seconds (got {raw!r}).",
                             key=OUTAGE_ENV, fix="set it to e.g. 900, or unset it.") from None


def _unreachable(exc: BaseException) -> bool:
    """True when the server could not be reached (refused, timed out, gave 5xx after
    retries) rather than refusing the request itself."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             requests.exceptions.RetryError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs), waiting out an unreachable tracking server (see above)."""
    global _gave_up
    deadline = None
    while True:
        try:
            result = fn(*args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException) as exc:
            if not _unreachable(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                budget = 0.0 if _gave_up is not None or _try_once else outage_budget_s()
                deadline = now + budget
                if budget:
                    log.warning("MLflow tracking server unreachable (%s); the study waits "
                                "for it, up to %.0f s (%s).",
                                str(exc).splitlines()[0][:200], budget, OUTAGE_ENV)
            if now >= deadline:
                _gave_up = TrackingLostError(
                    f"the MLflow tracking server stayed unreachable for more than "
                    f"{outage_budget_s():.0f} s ({str(exc).splitlines()[0][:200]}); "
                    f"the study stopped.", key=OUTAGE_ENV,
                    fix="once the server answers again, continue the study with the "
                        "--resume command printed above (raise the budget for longer "
                        "outages).")
                raise _gave_up from exc
            time.sleep(RETRY_EVERY_S)
        else:
            if deadline is not None:
                log.warning("MLflow tracking server answers again; the study goes on.")
            _gave_up = None
            return result


class RetryingClient:
    """An MlflowClient whose every method goes through call()."""

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str):
        # Private and dunder names are not forwarded: unpickling looks some up before
        # _client exists, which would recurse.
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._client, name)
        return functools.partial(call, attr) if callable(attr) else attr


def client() -> RetryingClient:
    """A retrying client for the tracking URI a study set (open_study_runs)."""
    return RetryingClient(MlflowClient())


def _client(tracking_uri: str) -> RetryingClient:
    for name, value in _MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    outage_budget_s()  # a malformed value fails now, not in the middle of an outage
    check_usable(tracking_uri)
    return RetryingClient(MlflowClient(tracking_uri=tracking_uri))


def check_reachable(tracking_uri: str) -> None:
    """At start, an unreachable server is a setup mistake: say so at once, instead of
    waiting out an outage that is not one."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    # TLS as MLflow's own client does it; any HTTP answer (even 401 or 404 behind a
    # proxy) means a server is there: only a connection that fails is refused here.
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or not insecure
    try:
        requests.get(url, timeout=10, verify=verify)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise TrackingUnreachableError(
            f"MLflow tracking server {tracking_uri} does not answer ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}).", key="MLFLOW_TRACKING_URI",
            fix="start the server (`mlflow server ...`) or point MLFLOW_TRACKING_URI / "
                "mlflow.tracking_uri in config.yaml at a running one.") from None


def check_usable(tracking_uri: str, *, config_file: str | None = None) -> None:
    """A server answers; a local store can be opened or made (storage.check_tracking_store)."""
    if tracking_uri.startswith(("http://", "https://")):
        check_reachable(tracking_uri)
    else:
        check_tracking_store(tracking_uri, config_file=config_file)


@dataclass
class MlflowStudy:
    client: RetryingClient
    experiment_id: str
    parent_run_id: str


def open_study_runs(*, tracking_uri: str, experiment_name: str, run_name: str,
                    tags: dict[str, str]) -> MlflowStudy:
    mlflow.set_tracking_uri(tracking_uri)
    # An exported MLFLOW_RUN_ID would make a fluent start_run resume that run instead
    # of the one we name (mlflow#15713); every run here is addressed by explicit id.
    os.environ.pop("MLFLOW_RUN_ID", None)
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(experiment_name)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    parent = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return MlflowStudy(client, experiment_id, parent.info.run_id)


def reopen_study_runs(*, tracking_uri: str, experiment_id: str, parent_run_id: str
                      ) -> MlflowStudy:
    """The parent run of a study being resumed, set back to RUNNING."""
    mlflow.set_tracking_uri(tracking_uri)
    os.environ.pop("MLFLOW_RUN_ID", None)  # see open_study_runs
    client = _client(tracking_uri)
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as exc:
        from tuning.recovery.resume import ResumeError

        raise ResumeError(f"MLflow parent run {parent_run_id} is not in {tracking_uri} "
                          f"({exc.error_code}).", key="--resume",
                          fix="resume with the MLflow store the study started with "
                              "(MLFLOW_TRACKING_URI).") from None
    if parent.info.lifecycle_stage == "deleted":
        client.restore_run(parent_run_id)
    reopen_run(client, parent_run_id)
    return MlflowStudy(client, experiment_id, parent_run_id)


def create_child_run(study: MlflowStudy, *, name: str, tags: dict[str, str]) -> str:
    """A child run of the study's parent run; returns its id."""
    run = study.client.create_run(study.experiment_id, run_name=name,
                                  tags={PARENT_TAG: study.parent_run_id, **tags})
    return run.info.run_id


def delete_run(client: MlflowClient, run_id: str) -> None:
    client.delete_run(run_id)


def log_metric(client: MlflowClient, run_id: str, key: str, value: float) -> None:
    client.log_metric(run_id, key, value)


def reopen_run(client: MlflowClient, run_id: str) -> None:
    client.update_run(run_id, status="RUNNING")


def child_runs(study: MlflowStudy) -> list:
    """Every live child run of the study's parent run."""
    runs, token = [], None
    while True:
        page = study.client.search_runs(
            [study.experiment_id], max_results=1000, page_token=token,
            filter_string=f"tags.`{PARENT_TAG}` = '{study.parent_run_id}'")
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def logged_steps(client: MlflowClient, run_id: str, keys: tuple[str, ...]) -> set[int]:
    steps: set[int] = set()
    for key in keys:
        steps.update(m.step for m in client.get_metric_history(run_id, key))
    return steps


def logged_model_uri(client: MlflowClient, experiment_id: str, run_id: str) -> str | None:
    """The URI of a model already logged to a run, if any (so that it is not logged twice)."""
    models = client.search_logged_models([experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'")
    return f"models:/{models[0].model_id}" if models else None


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, _param_text(v)) for k, v in params.items()]
    for start in range(0, len(items), BATCH_LIMIT):
        client.log_batch(run_id, params=items[start:start + BATCH_LIMIT])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], *, step: int,
                timestamp_ms: int) -> None:
    items = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()
             if is_finite_number(v)]
    if items:
        client.log_batch(run_id, metrics=items)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, redact_text(str(v))[:5000])
                                   for k, v in tags.items()])


def log_text(client: MlflowClient, run_id: str, text: str, artifact_file: str) -> None:
    call(client.log_text, run_id, text, artifact_file)  # client may be a plain one


def log_file(client: MlflowClient, run_id: str, path: Path, artifact_path: str) -> None:
    # A config may hold a URL with a password (mlflow.tracking_uri): logged masked.
    text = path.read_text(encoding="utf-8", errors="replace")
    if redact_text(text) != text:
        log_text(client, run_id, redact_text(text), f"{artifact_path}/{path.name}")
    else:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_yaml(client: MlflowClient, run_id: str, data: Any, artifact_file: str) -> None:
    log_text(client, run_id,
             redact_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True)),
             artifact_file)


CHAMPION = "champion"
# Version tags that say what a version's value means, so that a later study only moves
# the alias when its value beats the champion's on the same metric and direction.
METRIC_TAG, DIRECTION_TAG, VALUE_TAG = "themetune.metric", "themetune.direction", "themetune.value"


@dataclass
class Registration:
    model_name: str
    version: str
    champion_version: str        # the version the alias points at after this study
    moved: bool                  # True when this study's version became the champion
    reason: str                  # why the alias moved or stayed, for the study's output


def register_best(client: MlflowClient, *, model_uri: str, model_name: str,
                  tags: dict[str, str], description: str, metric: str, direction: str,
                  value: float) -> Registration:
    """Register the best model as a new version; move `champion` to it only when no
    champion exists or this value beats the champion's on the same metric and direction."""
    # A resume that redoes a dead driver's bookkeeping may find its version already there.
    version = (_version_of_parent(client, model_name, tags.get("parent_run_id"))
               or call(mlflow.register_model, model_uri, model_name, await_registration_for=60,
                       tags={**tags, METRIC_TAG: metric, DIRECTION_TAG: direction,
                             VALUE_TAG: repr(float(value))}))
    number = str(version.version)
    client.update_model_version(model_name, number, description=description)
    client.update_registered_model(model_name, description=description)
    current = _champion(client, model_name)
    moved, reason = _beats(current, metric=metric, direction=direction, value=value)
    if moved:
        client.set_registered_model_alias(model_name, CHAMPION, number)
    return Registration(model_name=model_name, version=number,
                        champion_version=number if moved else str(current.version),
                        moved=moved, reason=reason)


def _version_of_parent(client: MlflowClient, model_name: str, parent_run_id: str | None):
    """The version a study's parent run already registered, if any."""
    if not parent_run_id or "'" in model_name:   # a quote cannot go into the filter
        return None
    versions = call(client.search_model_versions, f"name = '{model_name}'")
    return next((v for v in versions if (v.tags or {}).get("parent_run_id") == parent_run_id),
                None)


def _champion(client: MlflowClient, model_name: str):
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


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact_text(text)[:MAX_PARAM_LEN]   # e.g. the storage URL: never its password
