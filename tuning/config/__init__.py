"""Load the four YAML files into one validated StudyConfig.

Precedence, later wins: optuna_params.yaml `base_params` < params.yaml < the values a
trial samples; the CLI's --theme-id, --n-trials, --timeout and --max-concurrent-trials
override the files. Everything a trial could reject is checked here, at start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from tuning.config.infra import AugmentsConfig, InfraConfig
from tuning.config.params import (
    DEFAULT_METRIC,
    MAX_CONCURRENT_TRIALS,
    MAX_SEED,
    MAX_TIMEOUT_SECONDS,
    MAX_TRIALS,
    REPORTED_METRICS,
    Strict,
    TrainingParams,
    deep_merge,
    has_dotted,
    known_param_paths,
    params_with_sample,
)
from tuning.config.search_space import ParamSpec, parse_param
from tuning.config.validation_errors import config_error_from_validation, printable
from tuning.config.yaml_loader import read_yaml
from tuning.errors import ConfigError, shown_value


class StudySection(Strict):
    name: str = Field(default="classification_study", min_length=1, max_length=200)
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = DEFAULT_METRIC
    n_trials: int = Field(default=10, ge=1, le=MAX_TRIALS)
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)  # TPE's; data.seed when unset

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in REPORTED_METRICS:
            raise ValueError(f"`metric` must be one the trials report: "
                             f"{', '.join(REPORTED_METRICS)}")
        return value


class OptunaParamsFile(Strict):
    study: StudySection = StudySection()
    params_to_tune: dict[str, Any] = Field(default_factory=dict)
    base_params: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class ConfigFiles:
    optuna_params: Path
    params: Path
    config: Path
    augments: Path

    @classmethod
    def in_folder(cls, folder: Path) -> "ConfigFiles":
        return cls(folder / "optuna_params.yaml", folder / "params.yaml",
                   folder / "config.yaml", folder / "augments.yaml")


@dataclass(frozen=True)
class Overrides:
    theme_id: int | None = None
    n_trials: int | None = None
    timeout: float | None = None
    max_concurrent_trials: int | None = None


@dataclass(frozen=True)
class StudyConfig:
    files: ConfigFiles
    study: StudySection
    space: dict[str, ParamSpec]
    base: dict[str, Any]          # nested params before sampling (base_params < params.yaml)
    params: TrainingParams        # `base`, validated
    infra: InfraConfig
    augments: AugmentsConfig
    theme_id: int
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)  # each file as read

    @property
    def run_name(self) -> str:
        return self.params.training.run_name

    @property
    def sampler_seed(self) -> int:
        return self.study.seed if self.study.seed is not None else self.params.data.seed

    def trial_params(self, sample: dict[str, Any]) -> TrainingParams:
        return TrainingParams.model_validate(params_with_sample(self.base, sample))

    def resolved(self) -> dict[str, Any]:
        """JSON-safe: the files after merging and overrides, as the study uses them."""
        return {
            "study": self.study.model_dump(),
            "params_to_tune": {k: v.model_dump(exclude_none=True) for k, v in self.space.items()},
            "params": self.params.model_dump(),
            "config": self.infra.model_dump(),
            "augments": self.augments.model_dump(),
        }


def _validate(model: type[BaseModel], data: dict[str, Any], *, file: str, prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error_from_validation(exc, file=file, model=model, prefix=prefix) from None


def _validate_params(base: dict[str, Any], params_yaml: dict[str, Any], *, files: ConfigFiles
                     ) -> TrainingParams:
    merged = deep_merge(base, params_yaml)
    try:
        return TrainingParams.model_validate(merged)
    except ValidationError as exc:
        # Name the file the offending key came from: params.yaml wins over base_params.
        loc = ".".join(str(p) for p in exc.errors(include_url=False)[0].get("loc", ()))
        if loc and has_dotted(params_yaml, loc):
            raise config_error_from_validation(exc, file=str(files.params),
                                               model=TrainingParams) from None
        if loc and has_dotted(base, loc):
            raise config_error_from_validation(exc, file=str(files.optuna_params),
                                               model=TrainingParams,
                                               prefix="base_params.") from None
        raise config_error_from_validation(exc, file=str(files.params),
                                           model=TrainingParams) from None


def _check_space_against_params(space: dict[str, ParamSpec], base: dict[str, Any], *,
                                file: str) -> None:
    """Each tuned key must be a parameter the trainable reads, and each edge value valid."""
    known = known_param_paths()
    for name, spec in space.items():
        if name not in known:
            raise ConfigError("is not a parameter the trainable uses.", file=file,
                              key=f"params_to_tune.{printable(name)}",
                              fix=f"use one of: {', '.join(known)}.")
        attr = "choices" if spec.type == "categorical" else "low/high"
        for value in spec.edge_values():
            try:
                TrainingParams.model_validate(params_with_sample(base, {name: value}))
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                msg = err.get("msg", "invalid").removeprefix("Value error, ")
                raise ConfigError(f"value {shown_value(value)} is not valid for {name}: {msg}.",
                                  file=file,
                                  key=f"params_to_tune.{name}.{attr}",
                                  fix="use only values the parameter accepts.") from None


def _study_with_overrides(study: StudySection, overrides: Overrides) -> StudySection:
    # The files' own values went through StudySection; the flags are held to its bounds.
    if overrides.n_trials is not None:
        if not 1 <= overrides.n_trials <= MAX_TRIALS:
            raise ConfigError(f"--n-trials must be between 1 and {MAX_TRIALS} "
                              f"(got {shown_value(overrides.n_trials)}).",
                              fix="pass a positive number of trials.")
        study = study.model_copy(update={"n_trials": overrides.n_trials})
    if overrides.timeout is not None:
        timeout = overrides.timeout
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT_SECONDS):
            raise ConfigError(f"--timeout must be > 0 and <= {MAX_TIMEOUT_SECONDS} seconds "
                              f"(got {shown_value(timeout)}).",
                              fix="pass a positive number of seconds, or leave it out.")
        study = study.model_copy(update={"timeout": timeout})
    return study


def _infra_with_overrides(infra: InfraConfig, overrides: Overrides) -> InfraConfig:
    concurrent = overrides.max_concurrent_trials
    if concurrent is None:
        return infra
    if not 1 <= concurrent <= MAX_CONCURRENT_TRIALS:
        raise ConfigError(f"--max-concurrent-trials must be between 1 and "
                          f"{MAX_CONCURRENT_TRIALS} (got {shown_value(concurrent)}).",
                          fix="pass a positive number.")
    return infra.model_copy(update={"max_concurrent_trials": concurrent})


def load_study_config(files: ConfigFiles, overrides: Overrides = Overrides()) -> StudyConfig:
    raw_optuna = read_yaml(files.optuna_params)
    raw_params = read_yaml(files.params)
    raw_infra = read_yaml(files.config)
    raw_augments = read_yaml(files.augments)

    optuna_file: OptunaParamsFile = _validate(OptunaParamsFile, raw_optuna,
                                              file=str(files.optuna_params))
    study = _study_with_overrides(optuna_file.study, overrides)

    space = {name: parse_param(str(name), spec, file=str(files.optuna_params))
             for name, spec in optuna_file.params_to_tune.items()}
    if not space:
        raise ConfigError("no parameters to tune.", file=str(files.optuna_params),
                          key="params_to_tune",
                          fix="add at least one entry, e.g. training.learning_rate.")

    params_yaml = raw_params
    if overrides.theme_id is not None:
        params_yaml = deep_merge(raw_params, {"data": {"theme_id": overrides.theme_id}})
    base = deep_merge(optuna_file.base_params, params_yaml)
    params = _validate_params(optuna_file.base_params, params_yaml, files=files)
    _check_space_against_params(space, base, file=str(files.optuna_params))

    infra = _infra_with_overrides(_validate(InfraConfig, raw_infra, file=str(files.config)),
                                  overrides)
    augments: AugmentsConfig = _validate(AugmentsConfig, raw_augments, file=str(files.augments))

    if params.data.theme_id is None:
        raise ConfigError("no theme given.", file=str(files.params), key="data.theme_id",
                          fix="pass --theme-id N or set data.theme_id.")

    return StudyConfig(files=files, study=study, space=space, base=base, params=params,
                       infra=infra, augments=augments, theme_id=params.data.theme_id,
                       raw={"optuna_params": raw_optuna, "params": raw_params,
                            "config": raw_infra, "augments": raw_augments})


def load_infra_config(path: Path) -> InfraConfig:
    """config.yaml alone, validated as a study would (predict.py reads its MLflow store)."""
    return _validate(InfraConfig, read_yaml(path), file=str(path))
