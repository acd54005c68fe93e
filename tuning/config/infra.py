"""config.yaml: where the study runs and records (infrastructure, not hyperparameters)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuning.config.params import (
    MAX_CONCURRENT_TRIALS,
    MAX_COUNT,
    MAX_CPUS,
    MAX_EPOCHS,
    MAX_GPUS,
    MAX_MEMORY_GB,
    Strict,
)


class MlflowSection(Strict):
    # MLFLOW_TRACKING_URI in the environment wins over this.
    tracking_uri: str = "sqlite:///mlflow.db"
    # Which trials' models are logged to their child runs; the best model always
    # goes to the parent run and the registry.
    log_models: Literal["all", "best", "none"] = "all"


class RaySection(Strict):
    address: str | None = None          # None: start a local cluster; "auto" or ray://...
    num_cpus: int | None = Field(default=None, ge=1, le=MAX_CPUS)   # local cluster only
    num_gpus: int | None = Field(default=None, ge=0, le=MAX_GPUS)   # local cluster only
    dashboard_host: str = "127.0.0.1"
    storage_path: str = "ray_results"   # every node must reach it on a multi-node cluster


class ResourcesSection(Strict):
    cpu: float = Field(default=1, gt=0, le=MAX_CPUS)
    gpu: float = Field(default=0, ge=0, le=MAX_GPUS)
    # Host memory a trial may add to what its worker holds at start (tuning/trial/memory_cap.py);
    # also reserved in Ray's scheduler. None: no cap, no reservation.
    memory_gb: float | None = Field(default=None, gt=0, le=MAX_MEMORY_GB)

    @model_validator(mode="after")
    def _fractional_gpu(self) -> "ResourcesSection":
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"a gpu share above 1 must be a whole number (gpu={self.gpu})")
        return self


class SchedulerSection(Strict):
    type: Literal["none", "asha"] = "none"
    # The scheduler decides on a validation metric: the study's metric (often
    # test_*) is only reported once, after the last epoch.
    metric: Literal["valid_acc", "valid_loss", "train_loss", "train_acc"] = "valid_acc"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(default=1, ge=1, le=MAX_EPOCHS)
    reduction_factor: float = Field(default=2, gt=1, le=MAX_COUNT)


class CheckpointSection(Strict):
    num_to_keep: int = Field(default=1, ge=1, le=MAX_COUNT)
    # False: at the study's end, a trial's checkpoint goes when its model is in MLflow
    # (tuning.tracking.checkpoint_pruning); the best trial's always stays.
    keep_finished: bool = False


class FailureSection(Strict):
    max_failures: int = Field(default=0, ge=-1, le=MAX_COUNT)


class InfraConfig(Strict):
    mlflow: MlflowSection = MlflowSection()
    ray: RaySection = RaySection()
    resources: ResourcesSection = ResourcesSection()
    max_concurrent_trials: int = Field(default=2, ge=1, le=MAX_CONCURRENT_TRIALS)
    scheduler: SchedulerSection = SchedulerSection()
    checkpoint: CheckpointSection = CheckpointSection()
    failure: FailureSection = FailureSection()
    cache_dir: str = ".cache/themetune"


class AugmentsConfig(Strict):
    """augments.yaml: applied to training batches on the trial's device."""

    enabled: bool = True
    horizontal_flip: float = Field(default=0.0, ge=0, le=1)
    vertical_flip: float = Field(default=0.0, ge=0, le=1)
    random_crop_padding: int = Field(default=0, ge=0, le=64)
    brightness: float = Field(default=0.0, ge=0, lt=1)
    contrast: float = Field(default=0.0, ge=0, lt=1)
