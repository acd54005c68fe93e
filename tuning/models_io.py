"""Trial models from their checkpoints into MLflow: the child run's copy and the best."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from tuning import mlflow_runs
from tuning.ledger import TrialRecord
from tuning.model import build_model

log = logging.getLogger("themetune")


class ModelLogger:
    def __init__(self, *, plan):
        self.plan = plan

    def load(self, record: TrialRecord):
        params = self.plan.config.trial_params(record.params)
        model = build_model(params.model.name, num_classes=self.plan.theme.num_classes,
                            in_channels=params.data.channels)
        model.load_state_dict(self._checkpoint_state(record.checkpoint_path)["model"])
        return model.eval(), params

    def _checkpoint_state(self, fs_path: str) -> dict:
        # Tune gives a checkpoint's path on the storage's own filesystem ("bucket/key"
        # on S3): read it through the filesystem of ray.storage_path, as Tune wrote it.
        import torch

        from tuning.cluster import is_remote_storage
        from tuning.trainable import CHECKPOINT_FILE, load_state_dict

        storage = self.plan.config.infra.ray.storage_path
        if not is_remote_storage(storage):
            return load_state_dict(Path(fs_path))
        import pyarrow.fs

        fs, _ = pyarrow.fs.FileSystem.from_uri(storage)
        with fs.open_input_stream(f"{fs_path.rstrip('/')}/{CHECKPOINT_FILE}") as f:
            data = f.readall()
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def log_trial_model(self, record: TrialRecord) -> None:
        """Log a finished trial's model into its child run, with the config it ran with."""
        if record.checkpoint_path is None or record.model_uri is not None:
            return
        model, params = self.load(record)
        record.model_uri = mlflow_runs.log_torch_model(record.child_run_id, model,
                                                       name=mlflow_runs.MODEL_ARTIFACT)
        mlflow_runs.log_yaml(self._client(), record.child_run_id, params.model_dump(),
                             "trial_config.yaml")

    def log_best(self, best: TrialRecord, *, parent_run_id: str) -> str:
        """Copy the best model to the parent run; return the URI to register.

        The registered version points at the best trial's own model when it was
        logged (log_models all or best), else at the parent run's copy.
        """
        if self.plan.config.infra.mlflow.log_models == "best":
            self.log_trial_model(best)
        model, _ = self.load(best)
        parent_uri = mlflow_runs.log_torch_model(parent_run_id, model,
                                                 name=mlflow_runs.BEST_MODEL_ARTIFACT)
        return best.model_uri or parent_uri

    @staticmethod
    def _client():
        from mlflow.tracking import MlflowClient

        return MlflowClient()
