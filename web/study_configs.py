"""The new-study form's values <-> the four YAML files that launch.py reads.

The form has three parts: the study's fields, the search space as rows (one per tuned
key) and the fixed parameters, whose common keys have fields of their own while the rest
stays YAML (the advanced view). Validation is the CLI's own: the files are written and
read back by tuning.config.load_study_config, so the form shows the same one-line errors
as `python launch.py`, next to the field or the row that holds the offending key.
Reading files into the form and writing them back gives the same files again.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data_access.selectors import ParamConfigInfo
from tuning.cluster import check_resources
from tuning.config import ConfigFiles, Overrides, StudyConfig, load_study_config
from tuning.config.params import (
    DEFAULT_METRIC,
    TrainingParams,
    deep_merge,
    set_dotted,
    tunable_keys,
)
from tuning.config.search_space import parse_param
from tuning.config.validation_errors import printable
from tuning.config.yaml_loader import read_yaml
from tuning.errors import ConfigError

FILE_NAMES = ("optuna_params.yaml", "params.yaml", "config.yaml", "augments.yaml")
DEFAULT_PRESET = "default"
SPACE_FILE = "optuna_params.yaml"
# config.yaml keys that have their own form fields; the rest stays in its text area.
_CONFIG_FIELD_SECTIONS = ("resources", "max_concurrent_trials", "scheduler")
# The fixed parameters that have a form field: field -> dotted key of the params. They
# are written to params.yaml, so they win over the same keys in base_params.
COMMON_FIELDS = {
    "num_epochs": "training.num_epochs",
    "image_size": "data.image_size",
    "channels": "data.channels",
    "split_train": "data.split_ratio.train",
    "split_valid": "data.split_ratio.valid",
    "split_test": "data.split_ratio.test",
    "seed": "data.seed",
    "equalization": "preprocessing.brightness_correction.enabled",
    "patch_enabled": "preprocessing.patch.enabled",
    "patch_size": "preprocessing.patch.size",
    "patch_stride": "preprocessing.patch.stride",
    "pretrained": "model.pretrained",
}
_COMMON_BY_KEY = {key: name for name, key in COMMON_FIELDS.items()}
ROW_FIELDS = ("name", "type", "low", "high", "log", "step", "choices")


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


# ---------------------------------------------------------------- search space rows


def _split_outside_quotes(line: str) -> list[str]:
    tokens, current, quote = [], [], ""
    for char in line:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == ",":
            tokens.append("".join(current))
            current = []
            continue
        current.append(char)
    tokens.append("".join(current))
    return tokens


def _choice(token: str) -> Any:
    """One choice as typed: "quoted" is text; true/false, null and numbers are what YAML
    makes of them; anything else is text."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return token[1:-1]
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    return _scalar(token)


def parse_choices(text: str) -> list[Any]:
    """A categorical row's choices: one per line, or separated by commas (a choice that
    holds a comma is quoted)."""
    return [_choice(token.strip()) for line in (text or "").splitlines()
            for token in _split_outside_quotes(line) if token.strip()]


def format_choices(choices: list[Any]) -> str:
    """The text parse_choices reads back as the same list, one choice per line."""
    lines = []
    for value in choices:
        if value is None:
            lines.append("null")
        elif isinstance(value, bool):
            lines.append("true" if value else "false")
        elif isinstance(value, str):
            plain = (value == value.strip() and "," not in value
                     and type(_choice(value)) is str and _choice(value) == value)
            lines.append(value if plain else f'"{value}"')
        else:
            lines.append(str(value))
    return "\n".join(lines)


def spec_row(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A params_to_tune entry as a row of the form."""
    return {"name": name, "type": _text(spec.get("type")),
            "low": _text(spec.get("low")), "high": _text(spec.get("high")),
            "log": bool(spec.get("log")), "step": _text(spec.get("step")),
            "choices": format_choices(spec.get("choices") or [])}


def new_row(name: str) -> dict[str, Any]:
    """The row that choosing a key starts: every value it accepts for a key of a few
    values (or true and false), else a range of its type to fill in."""
    key = next((k for k in tunable_keys() if k.name == name), None)
    if key is None:
        return spec_row(name, {"type": "float"})
    accepts = key.accepts
    if accepts.kind in ("choices", "bool", "text"):
        return spec_row(name, {"type": "categorical", "choices": list(accepts.choices)})
    return spec_row(name, {"type": accepts.kind})


def row_spec(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the form as the params_to_tune entry it stands for; the fields the row's
    type does not use are left out."""
    kind = (row.get("type") or "").strip()
    spec: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        spec["choices"] = parse_choices(row.get("choices", ""))
        return spec
    for key in ("low", "high"):
        value = _scalar(row.get(key, ""))
        if value is not None:
            spec[key] = value
    if row.get("log"):
        spec["log"] = True
    step = _scalar(row.get("step", ""))
    if step is not None:
        spec["step"] = step
    return spec


def check_rows(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Each row's first problem, in the CLI's words (rows are numbered from 0). The
    rules across the files (an unknown key, a value the parameter refuses) are left to
    build(), which reports the first of them."""
    problems: dict[int, str] = {}
    first_row: dict[str, int] = {}
    for index, row in enumerate(rows):
        name = (row.get("name") or "").strip()
        if name in first_row:
            problems[index] = ConfigError(
                f"the same key appears twice in one mapping (rows {first_row[name] + 1} "
                f"and {index + 1}).", file=SPACE_FILE,
                key=f"params_to_tune.{printable(name)}",
                fix="keep one of them: the later one would silently win.").one_line()
            continue
        first_row[name] = index
        try:
            parse_param(name, row_spec(row), file=SPACE_FILE)
        except ConfigError as exc:
            problems[index] = exc.one_line()
    return problems


def row_for_key(rows: list[dict[str, Any]], key: str | None) -> int | None:
    """The row whose parameter an error's key names (`params_to_tune.<name>...`)."""
    rest = (key or "").removeprefix("params_to_tune")
    best = None
    for index, row in enumerate(rows):
        name = printable((row.get("name") or "").strip())
        if rest == f".{name}" or rest.startswith(f".{name}."):
            if best is None or len(name) > len((rows[best].get("name") or "").strip()):
                best = index
    return best


def space_table(params_to_tune: dict[str, Any]) -> tuple[ParamConfigInfo, ...]:
    """A search space as the rows the study and theme pages show (the shape of a
    study's TuningParamConfig rows)."""
    return tuple(ParamConfigInfo(
        name=name, type=spec.get("type", ""), low=spec.get("low"), high=spec.get("high"),
        log=bool(spec.get("log")), step=spec.get("step"), choices=spec.get("choices"))
        for name, spec in params_to_tune.items() if isinstance(spec, dict))


def preset_space(preset: Preset) -> tuple[ParamConfigInfo, ...]:
    """The preset's search space as table rows. Raises ConfigError when unreadable."""
    return space_table(read_yaml(preset.folder / "optuna_params.yaml").get("params_to_tune")
                       or {})


# ---------------------------------------------------------------- files -> form


def _get_dotted(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _without_dotted(tree: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A copy of `tree` without `a.b.c`; sections left empty go too."""
    result = copy.deepcopy(tree)
    *parents, leaf = dotted.split(".")
    chain = [result]
    for part in parents:
        child = chain[-1].get(part)
        if not isinstance(child, dict):
            return result
        chain.append(child)
    chain[-1].pop(leaf, None)
    for depth in range(len(parents), 0, -1):
        if chain[depth] == {}:
            chain[depth - 1].pop(parents[depth - 1])
    return result


def _model_default(dotted: str) -> Any:
    found, value = _get_dotted(TrainingParams().model_dump(), dotted)
    return value if found else None


def _common_values(merged: dict[str, Any]) -> dict[str, Any]:
    """The common fields' values: what the files set, else the parameter's default."""
    values = {}
    for field, dotted in COMMON_FIELDS.items():
        found, value = _get_dotted(merged, dotted)
        value = value if found else _model_default(dotted)
        values[field] = bool(value) if isinstance(value, bool) else _text(value)
    return values


def _prefilled_params(preset: Preset, *, class_count: int | None, theme_name: str | None,
                      theme_defaults: dict[str, Any] | None
                      ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """base_params and params.yaml as the chosen theme starts them: its class count,
    its saved defaults, no other theme's id. Returns (optuna file, base, params)."""
    optuna = read_yaml(preset.folder / "optuna_params.yaml")
    base = copy.deepcopy(optuna.get("base_params") or {})
    params = read_yaml(preset.folder / "params.yaml")
    model = base.get("model")
    if class_count and isinstance(model, dict) and "num_classes" in model:
        # The preset was written for another theme; the study checks this value.
        model["num_classes"] = class_count
    if theme_defaults:
        params = deep_merge(params, theme_defaults)
    if theme_name and _get_dotted(params, "training.run_name")[0]:
        params = set_dotted(params, "training.run_name", f"{theme_name}_tuning")
    # The form's theme field names the theme; the files it writes say it again.
    params = _without_dotted(params, "data.theme_id")
    base = _without_dotted(base, "data.theme_id")
    return optuna, base, params


def initial_values(preset: Preset, *, class_count: int | None = None,
                   theme_defaults: dict[str, Any] | None = None,
                   theme_name: str | None = None) -> dict[str, Any]:
    """The form's fields and search space rows (`space_rows`), filled from a folder of
    the four files and the chosen theme.

    Raises ConfigError when a file cannot be read."""
    optuna, base, params = _prefilled_params(preset, class_count=class_count,
                                             theme_name=theme_name,
                                             theme_defaults=theme_defaults)
    config = read_yaml(preset.folder / "config.yaml")
    study = optuna.get("study") or {}
    common = _common_values(deep_merge(base, params))
    for dotted in COMMON_FIELDS.values():
        base, params = _without_dotted(base, dotted), _without_dotted(params, dotted)
    resources = config.get("resources") or {}
    scheduler = config.get("scheduler") or {}
    rest = {k: v for k, v in config.items() if k not in _CONFIG_FIELD_SECTIONS}
    space = optuna.get("params_to_tune") or {}
    return {
        "study_name": _text(study.get("name")),
        "direction": _text(study.get("direction", "maximize")),
        "metric": _text(study.get("metric", DEFAULT_METRIC)),
        "n_trials": _text(study.get("n_trials")),
        "timeout": _text(study.get("timeout")),
        **common,
        "base_params": _dump(base),
        "params": _dump(params),
        "cpu": _text(resources.get("cpu")),
        "gpu": _text(resources.get("gpu")),
        "max_concurrent_trials": _text(config.get("max_concurrent_trials")),
        "scheduler": _text(scheduler.get("type", "none")),
        "grace_period": _text(scheduler.get("grace_period")),
        "config": _dump(rest),
        "augments": _dump(read_yaml(preset.folder / "augments.yaml")),
        "space_rows": [spec_row(str(name), spec if isinstance(spec, dict) else {})
                       for name, spec in space.items()],
    }


# ---------------------------------------------------------------- form -> files


class FieldError(Exception):
    """A config error, attached to the form field that holds the offending key, or to
    a row of the search space (field "space" with the row's index)."""

    def __init__(self, field: str | None, message: str, row: int | None = None):
        super().__init__(message)
        self.field = field
        self.message = message
        self.row = row


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


def _common_params(values: dict[str, Any]) -> dict[str, Any]:
    """The common fields as nested params; an empty number field sets nothing."""
    tree: dict[str, Any] = {}
    for field, dotted in COMMON_FIELDS.items():
        value = values.get(field)
        value = value if isinstance(value, bool) else _scalar(value or "")
        if value is not None:
            tree = set_dotted(tree, dotted, value)
    return tree


def compose(values: dict[str, Any], scratch: Path, *, theme_id: int | None = None
            ) -> dict[str, str]:
    """The four files' text from the form's values (`space_rows`: the search space's
    rows, see row_spec). params.yaml names the theme, so that `launch.py --configs` on
    the files alone runs the same study."""
    study = _without_none({
        "name": (values.get("study_name") or "").strip() or None,
        "direction": values.get("direction") or None,
        "metric": values.get("metric") or None,
        "n_trials": _scalar(values.get("n_trials", "")),
        "timeout": _scalar(values.get("timeout", "")),
    })
    space: dict[str, Any] = {}
    for row in values.get("space_rows") or []:
        space.setdefault((row.get("name") or "").strip(), row_spec(row))
    optuna = {"study": study, "params_to_tune": space,
              "base_params": _mapping("base_params", values.get("base_params", ""), scratch)}
    params = deep_merge(_mapping("params", values.get("params", ""), scratch),
                        _common_params(values))
    if theme_id is not None:
        params = set_dotted(params, "data.theme_id", theme_id)
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
    return {
        "optuna_params.yaml": _dump(optuna),
        "params.yaml": _dump(params),
        "config.yaml": _dump(deep_merge(config, overrides)),
        "augments.yaml": _dump(_mapping("augments", values.get("augments", ""), scratch)),
    }


_STUDY_FIELDS = {"study.name": "study_name", "study.direction": "direction",
                 "study.metric": "metric", "study.n_trials": "n_trials",
                 "study.timeout": "timeout"}
_CONFIG_FIELDS = {"resources.cpu": "cpu", "resources.gpu": "gpu", "resources": "cpu",
                  "max_concurrent_trials": "max_concurrent_trials",
                  "scheduler.type": "scheduler", "scheduler.grace_period": "grace_period"}


_COMMON_KEYS = {**_COMMON_BY_KEY, "data.split_ratio": "split_train"}


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
            return _COMMON_KEYS.get(key.removeprefix("base_params."), "base_params")
        return None
    if name == "params.yaml":
        if key == "data.theme_id":
            return "theme"
        # No key: a rule across keys (a patch larger than the image), named in the message.
        return _COMMON_KEYS.get(key, "params") if key else None
    if name == "config.yaml":
        if key in _CONFIG_FIELDS:
            return _CONFIG_FIELDS[key]
        return "scheduler" if key.startswith("scheduler") else "config"
    if name == "augments.yaml":
        return "augments"
    return None


def build(values: dict[str, Any], *, theme_id: int) -> StudyFiles:
    """Compose and validate the four files as launch.py will read them.

    Raises RowErrors (a FieldError) naming each search space row that breaks a rule of
    its own, else FieldError with the CLI's message for the first problem found."""
    rows = list(values.get("space_rows") or [])
    row_problems = check_rows(rows)
    if row_problems:
        raise RowErrors(row_problems)
    with tempfile.TemporaryDirectory(prefix="themetune-form-") as tmp:
        scratch = Path(tmp) / "fields"
        scratch.mkdir()
        texts = compose(values, scratch, theme_id=theme_id)
        folder = Path(tmp) / "configs"
        files = StudyFiles(texts=texts, config=None).write(folder)  # type: ignore[arg-type]
        try:
            config = load_study_config(files, Overrides(theme_id=theme_id))
            check_resources(config.infra, file=str(files.config))
        except ConfigError as exc:
            shown = ConfigError(exc.message, file=Path(exc.file).name if exc.file else None,
                                key=exc.key, fix=exc.fix)
            field = field_for(exc.file, exc.key)
            row = row_for_key(rows, exc.key) if field == "space" else None
            raise FieldError(field, shown.one_line(), row=row) from None
    return StudyFiles(texts=texts, config=config)


class RowErrors(FieldError):
    """Problems of several search space rows at once: row index -> the CLI's line."""

    def __init__(self, problems: dict[int, str]):
        first = min(problems)
        super().__init__("space", problems[first], row=first)
        self.problems = problems
