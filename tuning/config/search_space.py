"""`params_to_tune` entries, validated, and turned into Optuna distributions.

The space is checked whole before anything runs, so a bad range fails at start,
not hours later inside a trial.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import optuna.distributions as od
from pydantic import Field, ValidationError, model_validator

from tuning.config.params import MAX_ID, Strict
from tuning.config.validation_errors import config_error_from_validation, printable
from tuning.errors import ConfigError, shown_value

Scalar = Union[bool, int, float, str, None]
# Optuna stores every sampled value in SQLite: an int past 64 bits cannot be stored.
_INT_BOUND = {"ge": -MAX_ID, "le": MAX_ID}
MAX_CHOICES = 1_000


class FloatParam(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _rules(self) -> "FloatParam":
        if self.low > self.high:
            raise ValueError(f"`low` must be <= `high` (low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"`low` must be > 0 when `log` is true (low={self.low})")
        if self.log and self.step is not None:
            raise ValueError(f"`step` cannot be used with `log: true` (step={self.step})")
        return self

    def distribution(self) -> od.BaseDistribution:
        return od.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def edge_values(self) -> list[Any]:
        return [self.low, self.high]


class IntParam(Strict):
    type: Literal["int"]
    low: int = Field(**_INT_BOUND)
    high: int = Field(**_INT_BOUND)
    step: int = Field(default=1, ge=1, le=MAX_ID)
    log: bool = False

    @model_validator(mode="after")
    def _rules(self) -> "IntParam":
        if self.low > self.high:
            raise ValueError(f"`low` must be <= `high` (low={self.low}, high={self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"`low` must be >= 1 when `log` is true (low={self.low})")
        if self.log and self.step != 1:
            raise ValueError(f"`step` cannot be used with `log: true` (step={self.step})")
        return self

    def distribution(self) -> od.BaseDistribution:
        return od.IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def edge_values(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _unique(self) -> "CategoricalParam":
        seen: list[Any] = []
        for choice in self.choices:
            # 1 and True compare equal in Python but are different choices in YAML.
            if any(type(choice) is type(s) and choice == s for s in seen):
                raise ValueError(f"`choices` must not repeat a value "
                                 f"(repeated: {shown_value(choice)})")
            seen.append(choice)
        return self

    def distribution(self) -> od.BaseDistribution:
        return od.CategoricalDistribution(tuple(self.choices))

    def edge_values(self) -> list[Any]:
        return list(self.choices)


ParamSpec = Union[FloatParam, IntParam, CategoricalParam]
_BY_TYPE: dict[str, type[Strict]] = {"float": FloatParam, "int": IntParam,
                                     "categorical": CategoricalParam}
# The `type` values a params_to_tune entry may have, in the order a form offers them.
PARAM_TYPES = tuple(_BY_TYPE)


def parse_param(name: str, raw: Any, *, file: str) -> ParamSpec:
    key = f"params_to_tune.{printable(name)}"
    if not isinstance(raw, dict):
        raise ConfigError(f"each parameter must be a mapping with `type` "
                          f"(got {shown_value(raw)}).",
                          file=file, key=key, fix="write e.g. `type: float`, `low`, `high`.")
    kind = raw.get("type")
    model = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ConfigError(f"unknown parameter type {shown_value(kind)}.", file=file,
                          key=f"{key}.type",
                          fix="use one of: float, int, categorical.")
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise config_error_from_validation(exc, file=file, model=model, prefix=f"{key}.") from None


def to_distributions(space: dict[str, ParamSpec]) -> dict[str, od.BaseDistribution]:
    return {name: spec.distribution() for name, spec in space.items()}


def describe(space: dict[str, ParamSpec]) -> dict[str, dict[str, Any]]:
    """A JSON-safe description, for records and the dry-run printout."""
    return {name: spec.model_dump(exclude_none=True) for name, spec in space.items()}


def format_space(space: dict[str, ParamSpec]) -> list[str]:
    lines = []
    for name, spec in space.items():
        if isinstance(spec, CategoricalParam):
            lines.append(f"  {name}: categorical {spec.choices}")
        else:
            extra = " log" if spec.log else ""
            if spec.step is not None and not (isinstance(spec, IntParam) and spec.step == 1):
                extra += f" step={spec.step}"
            lines.append(f"  {name}: {spec.type} [{spec.low}, {spec.high}]{extra}")
    return lines
