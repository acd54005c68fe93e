"""A study's MLflow runs, as the original system laid them out: experiment = theme, one
parent run per study, one child run `trial_{n}` per trial.

Only the driver calls this module. Runs are addressed by id through a retrying
MlflowClient (tracking.retrying); the fluent API is used only around log_model, which
needs an active run (tracking.model_package).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuning.config.params import REPORTED_METRICS
from tuning.errors import ResumeError
from tuning.numbers import is_finite_number
from tuning.redact import redact_text
from tuning.storage import check_tracking_store
from tuning.tracking import retrying
from tuning.tracking.retrying import RetryingClient

PARENT_TAG = "mlflow.parentRunId"
BEST_MODEL_ARTIFACT = "best_model"
# The experiment tag MLflow 3's UI reads to choose an experiment's view; without it an
# experiment opens on the GenAI overview. The value is the UI's CUSTOM_MODEL_DEVELOPMENT
# kind (mlflow/server/js: "custom_model_development"), its model-training view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
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
    # The theme's split datasets (tracking.datasets), linked to the parent and each child.
    datasets: list = field(default_factory=list)


def use_datasets(study: MlflowStudy, inputs: list) -> None:
    """Link the study's datasets to its parent run, and to each child run made after.
    Linking a run to a dataset it has is a no-op in MLflow: a resume may do it again."""
    study.datasets = list(inputs)
    if inputs:
        study.client.log_inputs(study.parent_run_id, datasets=study.datasets)


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
    if experiment is None or EXPERIMENT_KIND_TAG not in experiment.tags:
        # A kind someone chose in the UI stays as they chose it.
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
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


def study_links(study: MlflowStudy) -> dict[str, str]:
    """Where a study's runs are, for a reader of its Optuna study (optuna-dashboard): a
    link to the parent run for a tracking server, the store and the UI's path otherwise."""
    uri = redact_text(mlflow.get_tracking_uri())
    path = f"#/experiments/{study.experiment_id}/runs/{study.parent_run_id}"
    web = uri.startswith(("http://", "https://"))
    return {"mlflow.parent_run_id": study.parent_run_id,
            "mlflow.experiment_id": study.experiment_id,
            "mlflow.link": f"{uri.rstrip('/')}/{path}" if web else f"{uri} {path}"}


def create_child_run(study: MlflowStudy, *, name: str, tags: dict[str, str]) -> str:
    """A child run of the study's parent run; returns its id."""
    run = study.client.create_run(study.experiment_id, run_name=name,
                                  tags={PARENT_TAG: study.parent_run_id, **tags})
    if study.datasets:
        study.client.log_inputs(run.info.run_id, datasets=study.datasets)
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
                timestamp_ms: int, model_id: str | None = None) -> None:
    items = [Metric(k, float(v), timestamp_ms, step, model_id=model_id)
             for k, v in metrics.items() if is_finite_number(v)]
    if items:
        client.log_batch(run_id, metrics=items)


def trial_model_name(number: int) -> str:
    """A trial's logged model, named as its child run: what MLflow 3's Models tab lists."""
    return f"trial_{number}"


def result_metrics(result: dict) -> tuple[dict[str, float], int, int]:
    """A Tune result as its child run logs it: (metrics, step = epoch, timestamp in ms)."""
    epoch = int(result.get("epoch", result.get("training_iteration", 0)))
    metrics = {k: result[k] for k in REPORTED_METRICS if k in result}
    return metrics, epoch, int(result.get("timestamp", time.time()) * 1000)


def link_model_metrics(client: MlflowClient, run_id: str, model_id: str,
                       result: dict | None) -> None:
    """A trial's last result, linked to a logged model (its metric columns in the Models
    tab). Logged again to the trial's run exactly as it was (same step, timestamp and
    value), which MLflow keeps once: the run's history gains no point."""
    if not result:
        return
    metrics, step, timestamp_ms = result_metrics(result)
    if "timestamp" in result:
        log_metrics(client, run_id, metrics, step=step, timestamp_ms=timestamp_ms,
                    model_id=model_id)
        return
    # A result restored from a snapshot (--resume) has no time: each point's own is read.
    for key in metrics:
        points = [m for m in client.get_metric_history(run_id, key) if m.step == step]
        if points:
            log_metrics(client, run_id, {key: points[-1].value}, step=step,
                        timestamp_ms=points[-1].timestamp, model_id=model_id)


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
