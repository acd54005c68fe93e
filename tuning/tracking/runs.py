"""A study's MLflow runs, as the original system laid them out: experiment = theme, one
parent run per study, one child run `trial_{n}` per trial.

Only the driver calls this module. Runs are addressed by id through a retrying
MlflowClient (tracking.retrying); the fluent API is used only around log_model, which
needs an active run (tracking.model_package).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuning.errors import ResumeError
from tuning.numbers import is_finite_number
from tuning.redact import redact_text
from tuning.storage import check_tracking_store
from tuning.tracking import retrying
from tuning.tracking.retrying import RetryingClient

PARENT_TAG = "mlflow.parentRunId"
MODEL_ARTIFACT = "model"
BEST_MODEL_ARTIFACT = "best_model"
# MLflow caps a param value at 6000 characters; longer ones fail the whole batch.
MAX_PARAM_LEN = 6000
BATCH_LIMIT = 100


def check_usable(tracking_uri: str, *, config_file: str | None = None) -> None:
    """A server answers; a local store can be opened or made (storage.check_tracking_store)."""
    if tracking_uri.startswith(("http://", "https://")):
        retrying.check_reachable(tracking_uri)
    else:
        check_tracking_store(tracking_uri, config_file=config_file)


def study_client(tracking_uri: str) -> RetryingClient:
    """The retrying client of a study's driver, after the checks a start makes."""
    for name, value in retrying.MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Logging a model loads it back (input example check) through an artifact download,
    # whose progress bar was a third of the driver's, the Ray job's and the web log's lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    retrying.outage_budget_s()  # a malformed value fails now, not in the middle of an outage
    check_usable(tracking_uri)
    return RetryingClient(MlflowClient(tracking_uri=tracking_uri))


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
    client = study_client(tracking_uri)
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
    client = study_client(tracking_uri)
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as exc:
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


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


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
    retrying.call(client.log_text, run_id, text, artifact_file)  # client may be a plain one


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


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact_text(text)[:MAX_PARAM_LEN]   # e.g. the storage URL: never its password
