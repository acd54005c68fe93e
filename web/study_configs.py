"""The new-study form's values <-> the four YAML files that launch.py reads.

Validation is the CLI's own: the files are written and read back by
tuning.config.load_study_config, so the form shows the same one-line errors as
`python launch.py`, next to the field that holds the offending key.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuning.cluster import check_resources
from tuning.config import ConfigFiles, Overrides, StudyConfig, load_study_config
from tuning.config.params import DEFAULT_METRIC, deep_merge
from tuning.config.yaml_loader import read_yaml
from tuning.errors import ConfigError

FILE_NAMES = ("optuna_params.yaml", "params.yaml", "config.yaml", "augments.yaml")
DEFAULT_PRESET = "default"
# config.yaml keys that have their own form fields; the rest stays in its text area.
_CONFIG_FIELD_SECTIONS = ("resources", "max_concurrent_trials", "scheduler")


@dataclass(frozen=True)
class Preset:
    name: str       # "default" for configs/ itself, else the sub-folder's name
    folder: Path


def presets(configs_dir: Path) -> list[Preset]:
    """configs/ and each sub-folder holding the four files."""
    found = []
    if all((configs_dir / name).is_file() for name in FILE_NAMES):
        found.append(Preset(DEFAULT_PRESET, configs_dir))
    for child in sorted(p for p in configs_dir.iterdir() if p.is_dir()):
        if all((child / name).is_file() for name in FILE_NAMES):
            found.append(Preset(child.name, child))
    return found


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if data else ""


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def initial_values(preset: Preset, *, class_count: int | None = None,
                   theme_defaults: dict[str, Any] | None = None) -> dict[str, str]:
    """The form's fields, filled from a preset folder and the theme's saved defaults.

    Raises ConfigError when a preset file cannot be read."""
    optuna = read_yaml(preset.folder / "optuna_params.yaml")
    params_path = preset.folder / "params.yaml"
    config = read_yaml(preset.folder / "config.yaml")
    study = optuna.get("study") or {}
    base = copy.deepcopy(optuna.get("base_params") or {})
    model = base.get("model")
    if class_count and isinstance(model, dict) and "num_classes" in model:
        # The preset was written for another theme; the study checks this value.
        model["num_classes"] = class_count
    params_text = params_path.read_text(encoding="utf-8")
    if theme_defaults:
        params_text = _dump(deep_merge(read_yaml(params_path), theme_defaults))
    resources = config.get("resources") or {}
    scheduler = config.get("scheduler") or {}
    rest = {k: v for k, v in config.items() if k not in _CONFIG_FIELD_SECTIONS}
    return {
        "study_name": _text(study.get("name")),
        "direction": _text(study.get("direction", "maximize")),
        "metric": _text(study.get("metric", DEFAULT_METRIC)),
        "n_trials": _text(study.get("n_trials")),
        "timeout": _text(study.get("timeout")),
        "space": _dump(optuna.get("params_to_tune") or {}),
        "base_params": _dump(base),
        "params": params_text,
        "cpu": _text(resources.get("cpu")),
        "gpu": _text(resources.get("gpu")),
        "max_concurrent_trials": _text(config.get("max_concurrent_trials")),
        "scheduler": _text(scheduler.get("type", "none")),
        "grace_period": _text(scheduler.get("grace_period")),
        "config": _dump(rest),
        "augments": (preset.folder / "augments.yaml").read_text(encoding="utf-8"),
    }


# ---------------------------------------------------------------- form -> files


class FieldError(Exception):
    """A config error, attached to the form field that holds the offending key."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class StudyFiles:
    texts: dict[str, str]    # file name -> content, as validated
    config: StudyConfig

    def write(self, folder: Path) -> ConfigFiles:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.texts.items():
            (folder / name).write_text(text, encoding="utf-8")
        return ConfigFiles.in_folder(folder)


def _scalar(text: str) -> Any:
    """A number field's text as YAML would read the number: int, float, or the text
    itself (so that the config model, not the form, says what is wrong with it)."""
    text = (text or "").strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _mapping(field: str, text: str, folder: Path) -> dict[str, Any]:
    """A text area's YAML, read as the CLI reads a file."""
    path = folder / f"{field}.yaml"
    path.write_text(text or "", encoding="utf-8")
    try:
        return read_yaml(path)
    except ConfigError as exc:
        # The scratch file's name means nothing to the user; the key may (a repeated one).
        raise FieldError(field, ConfigError(exc.message, key=exc.key, fix=exc.fix).one_line()
                         ) from None


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def compose(values: dict[str, str], scratch: Path) -> dict[str, str]:
    """The four files' text from the form's values."""
    study = _without_none({
        "name": (values.get("study_name") or "").strip() or None,
        "direction": values.get("direction") or None,
        "metric": values.get("metric") or None,
        "n_trials": _scalar(values.get("n_trials", "")),
        "timeout": _scalar(values.get("timeout", "")),
    })
    optuna = {"study": study,
              "params_to_tune": _mapping("space", values.get("space", ""), scratch),
              "base_params": _mapping("base_params", values.get("base_params", ""), scratch)}
    config = _mapping("config", values.get("config", ""), scratch)
    resources = _without_none({"cpu": _scalar(values.get("cpu", "")),
                               "gpu": _scalar(values.get("gpu", ""))})
    scheduler = _without_none({"type": values.get("scheduler") or None,
                               "grace_period": _scalar(values.get("grace_period", ""))})
    overrides: dict[str, Any] = {}
    if resources:
        overrides["resources"] = resources
    if scheduler:
        overrides["scheduler"] = scheduler
    concurrent = _scalar(values.get("max_concurrent_trials", ""))
    if concurrent is not None:
        overrides["max_concurrent_trials"] = concurrent
    # Checked as a mapping here so that a bad text area is named as such.
    _mapping("params", values.get("params", ""), scratch)
    _mapping("augments", values.get("augments", ""), scratch)
    return {
        "optuna_params.yaml": _dump(optuna),
        # Kept as typed: a later error's line numbers then match what the user sees.
        "params.yaml": values.get("params", ""),
        "config.yaml": _dump(deep_merge(config, overrides)),
        "augments.yaml": values.get("augments", ""),
    }


_STUDY_FIELDS = {"study.name": "study_name", "study.direction": "direction",
                 "study.metric": "metric", "study.n_trials": "n_trials",
                 "study.timeout": "timeout"}
_CONFIG_FIELDS = {"resources.cpu": "cpu", "resources.gpu": "gpu", "resources": "cpu",
                  "max_concurrent_trials": "max_concurrent_trials",
                  "scheduler.type": "scheduler", "scheduler.grace_period": "grace_period"}


def field_for(file: str | None, key: str | None) -> str | None:
    """The form field that holds `key` of `file`; None for the form as a whole."""
    name = Path(file).name if file else ""
    key = key or ""
    if name == "optuna_params.yaml":
        if key in _STUDY_FIELDS:
            return _STUDY_FIELDS[key]
        if key.startswith("params_to_tune"):
            return "space"
        if key.startswith("base_params"):
            return "base_params"
        return None
    if name == "params.yaml":
        return "theme" if key == "data.theme_id" else "params"
    if name == "config.yaml":
        if key in _CONFIG_FIELDS:
            return _CONFIG_FIELDS[key]
        return "scheduler" if key.startswith("scheduler") else "config"
    if name == "augments.yaml":
        return "augments"
    return None


def build(values: dict[str, str], *, theme_id: int) -> StudyFiles:
    """Compose and validate the four files as launch.py will read them.

    Raises FieldError with the CLI's message for the first problem found."""
    with tempfile.TemporaryDirectory(prefix="themetune-form-") as tmp:
        scratch = Path(tmp) / "fields"
        scratch.mkdir()
        texts = compose(values, scratch)
        folder = Path(tmp) / "configs"
        files = StudyFiles(texts=texts, config=None).write(folder)  # type: ignore[arg-type]
        try:
            config = load_study_config(files, Overrides(theme_id=theme_id))
            check_resources(config.infra, file=str(files.config))
        except ConfigError as exc:
            shown = ConfigError(exc.message, file=Path(exc.file).name if exc.file else None,
                                key=exc.key, fix=exc.fix)
            raise FieldError(field_for(exc.file, exc.key), shown.one_line()) from None
    return StudyFiles(texts=texts, config=config)
