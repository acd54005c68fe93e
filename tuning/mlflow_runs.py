"""MLflow, as the original system laid it out: experiment = theme, one parent run per
study, one child run `trial_{n}` per trial, only the best model registered.

Only the driver calls this module. Runs are addressed by id through MlflowClient; the
fluent API is used only around log_model, which needs an active run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"
MODEL_ARTIFACT = "model"
BEST_MODEL_ARTIFACT = "best_model"
# MLflow caps a param value at 6000 characters; longer ones fail the whole batch.
MAX_PARAM_LEN = 6000
BATCH_LIMIT = 100


def resolve_tracking_uri(configured: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


@dataclass
class MlflowStudy:
    client: MlflowClient
    experiment_id: str
    parent_run_id: str


def open_study_runs(*, tracking_uri: str, experiment_name: str, run_name: str,
                    tags: dict[str, str]) -> MlflowStudy:
    mlflow.set_tracking_uri(tracking_uri)
    # An exported MLFLOW_RUN_ID would make a fluent start_run resume that run instead
    # of the one we name (mlflow#15713); every run here is addressed by explicit id.
    os.environ.pop("MLFLOW_RUN_ID", None)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(experiment_name)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    parent = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return MlflowStudy(client, experiment_id, parent.info.run_id)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, _param_text(v)) for k, v in params.items()]
    for start in range(0, len(items), BATCH_LIMIT):
        client.log_batch(run_id, params=items[start:start + BATCH_LIMIT])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], *, step: int,
                timestamp_ms: int) -> None:
    items = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if items:
        client.log_batch(run_id, metrics=items)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def log_text(client: MlflowClient, run_id: str, text: str, artifact_file: str) -> None:
    client.log_text(run_id, text, artifact_file)


def log_file(client: MlflowClient, run_id: str, path: Path, artifact_path: str) -> None:
    client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_yaml(client: MlflowClient, run_id: str, data: Any, artifact_file: str) -> None:
    log_text(client, run_id, yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
             artifact_file)


def log_torch_model(run_id: str, model, *, name: str) -> str:
    """Log a model with the pytorch flavour; returns the model URI to register."""
    import mlflow.pytorch

    # MLflow warns on every pickle-format save; the format is chosen on purpose above.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    with mlflow.start_run(run_id=run_id, nested=True):
        # pickle, not MLflow 3's pt2 default, which needs an input example; explicit
        # requirements skip MLflow's inference, which re-imports the model in a subprocess.
        info = mlflow.pytorch.log_model(model.cpu(), name=name, serialization_format="pickle",
                                        pip_requirements=["torch", "torchvision"])
    return info.model_uri


def register_best(client: MlflowClient, *, model_uri: str, model_name: str,
                  parent_run_id: str, best_run_id: str) -> str:
    version = mlflow.register_model(model_uri, model_name, await_registration_for=60,
                                    tags={"parent_run_id": parent_run_id,
                                          "best_run_id": best_run_id})
    return str(version.version)


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_LEN]


def write_temp_text(text: str, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="themetune-"))
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
