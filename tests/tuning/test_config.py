"""The four YAML files: the seed's format, precedence, and one clear error per mistake."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import optuna.distributions as od
import pytest
import yaml

from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.config.search_space import CategoricalParam, FloatParam, IntParam, to_distributions
from tuning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def load(folder: Path, **overrides):
    overrides.setdefault("theme_id", 1)
    return load_study_config(ConfigFiles.in_folder(folder), Overrides(**overrides))


def edit(folder: Path, name: str, change) -> None:
    path = folder / name
    data = yaml.safe_load(path.read_text()) or {}
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# -- the shipped files -----------------------------------------------------------------

def test_shipped_configs_load_with_every_seed_field():
    config = load(ROOT / "configs", theme_id=None)
    assert config.study.name == "classification_study"
    assert config.study.direction == "maximize"
    assert config.study.metric == "valid_acc"      # the test split stays held out
    assert config.study.n_trials == 50
    assert config.study.timeout is None
    assert set(config.space) == {"training.learning_rate", "training.batch_size",
                                 "training.optimizer", "model.name"}
    lr = config.space["training.learning_rate"]
    assert isinstance(lr, FloatParam) and lr.log and (lr.low, lr.high) == (0.0001, 0.01)
    assert config.space["training.batch_size"].choices == [2, 4, 8, 18, 36]
    assert config.space["model.name"].choices == ["ResNet18", "ResNet50", "ResNet101"]
    p = config.params
    assert p.model.num_classes == 10
    assert p.training.num_epochs == 3 and p.training.num_workers == 0
    assert (p.data.split_ratio.train, p.data.split_ratio.valid) == (0.7, 0.15)
    assert p.data.seed == 42
    assert p.preprocessing.brightness_correction.enabled
    assert p.preprocessing.brightness_correction.method == "histogram_equalization"
    assert p.preprocessing.patch.enabled is False
    # params.yaml's run_name wins over base_params'
    assert config.run_name == "my_tuning_experiment"
    assert config.theme_id == 7


def test_demo_configs_are_small():
    config = load(ROOT / "configs" / "demo", theme_id=1)
    assert config.study.metric == "valid_acc"
    assert config.params.model.name == "ResNet18"
    assert config.params.training.num_epochs == 2
    assert config.study.n_trials <= 8
    assert config.params.data.image_size <= 32


def test_large_theme_configs_stream_224_px_with_capped_epochs():
    config = load(ROOT / "configs" / "large", theme_id=1)
    assert config.study.metric == "valid_acc"
    assert config.params.data.mode == "streaming"
    assert (config.params.data.image_size, config.params.data.channels) == (224, 3)
    assert config.params.training.steps_per_epoch == 25


def test_data_mode_and_steps_per_epoch_are_checked(config_dir):
    edit(config_dir, "params.yaml", lambda d: d.setdefault("data", {}).update(mode="stream"))
    with pytest.raises(ConfigError, match="data.mode"):
        load(config_dir)
    edit(config_dir, "params.yaml", lambda d: d["data"].update(mode="resident"))
    edit(config_dir, "params.yaml", lambda d: d.setdefault("training", {}).update(
        steps_per_epoch=0))
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        load(config_dir)


def test_int_param_with_step_and_log_fields(config_dir):
    edit(config_dir, "optuna_params.yaml", lambda d: d["params_to_tune"].update({
        "training.num_epochs": {"type": "int", "low": 1, "high": 5, "step": 2},
        "training.batch_size": {"type": "int", "low": 2, "high": 32, "log": True}}))
    config = load(config_dir)
    dists = to_distributions(config.space)
    assert dists["training.num_epochs"] == od.IntDistribution(1, 5, step=2)
    assert dists["training.batch_size"] == od.IntDistribution(2, 32, log=True)
    assert isinstance(config.space["training.num_epochs"], IntParam)


# -- precedence --------------------------------------------------------------------------

def test_precedence_base_params_then_params_yaml_then_sample(config_dir):
    edit(config_dir, "optuna_params.yaml", lambda d: d["base_params"]["training"].update(
        {"learning_rate": 0.5, "weight_decay": 0.1}))
    edit(config_dir, "params.yaml", lambda d: d["training"].update({"learning_rate": 0.25}))
    config = load(config_dir)
    assert config.params.training.learning_rate == 0.25      # params.yaml > base_params
    assert config.params.training.weight_decay == 0.1        # only in base_params
    trial = config.trial_params({"training.learning_rate": 0.003})
    assert trial.training.learning_rate == 0.003              # sample > params.yaml
    assert trial.training.weight_decay == 0.1


def test_run_name_falls_back_to_base_params(config_dir):
    edit(config_dir, "params.yaml", lambda d: d["training"].pop("run_name"))
    assert load(config_dir).run_name == "base_run"


def test_cli_overrides_win(config_dir):
    edit(config_dir, "params.yaml", lambda d: d["data"].update({"theme_id": 3}))
    config = load(config_dir, theme_id=9, n_trials=4, timeout=60, max_concurrent_trials=3)
    assert config.theme_id == 9
    assert config.study.n_trials == 4 and config.study.timeout == 60
    assert config.infra.max_concurrent_trials == 3


def test_resolved_config_is_plain_data(config_dir):
    resolved = load(config_dir, theme_id=2).resolved()
    assert yaml.safe_load(yaml.safe_dump(resolved)) == resolved
    assert resolved["params"]["data"]["theme_id"] == 2


# -- errors: one line, file, key, fix ------------------------------------------------------

OPTUNA = "optuna_params.yaml"
PARAMS = "params.yaml"
INFRA = "config.yaml"
AUG = "augments.yaml"


def _space(d, name, spec):
    d["params_to_tune"][name] = spec


BAD_CASES = [
    # (id, file to edit, change, expected file in message, expected key, words in message)
    ("unknown top-level key", OPTUNA, lambda d: d.update({"studdy": {}}), OPTUNA, "studdy",
     "unknown key"),
    ("misspelled study key", OPTUNA, lambda d: d["study"].update({"n_trial": 3}), OPTUNA,
     "study.n_trial", "unknown key"),
    ("direction", OPTUNA, lambda d: d["study"].update({"direction": "up"}), OPTUNA,
     "study.direction", "maximize"),
    ("n_trials zero", OPTUNA, lambda d: d["study"].update({"n_trials": 0}), OPTUNA,
     "study.n_trials", "greater than or equal to 1"),
    ("n_trials text", OPTUNA, lambda d: d["study"].update({"n_trials": "many"}), OPTUNA,
     "study.n_trials", "integer"),
    ("negative timeout", OPTUNA, lambda d: d["study"].update({"timeout": -5}), OPTUNA,
     "study.timeout", "greater than 0"),
    ("metric never reported", OPTUNA, lambda d: d["study"].update({"metric": "f1"}), OPTUNA,
     "study.metric", "test_acc"),
    ("low > high", OPTUNA, lambda d: _space(d, "training.learning_rate",
                                              {"type": "float", "low": 0.1, "high": 0.01}),
     OPTUNA, "params_to_tune.training.learning_rate", "`low` must be <= `high`"),
    ("log with low <= 0", OPTUNA, lambda d: _space(d, "training.learning_rate", {
        "type": "float", "low": 0.0, "high": 0.01, "log": True}), OPTUNA,
     "params_to_tune.training.learning_rate", "> 0 when `log`"),
    ("step with log", OPTUNA, lambda d: _space(d, "training.batch_size", {
        "type": "int", "low": 2, "high": 64, "log": True, "step": 2}), OPTUNA,
     "params_to_tune.training.batch_size", "`step` cannot be used"),
    ("empty choices", OPTUNA, lambda d: _space(d, "training.optimizer",
                                               {"type": "categorical", "choices": []}),
     OPTUNA, "params_to_tune.training.optimizer.choices", "at least 1"),
    ("duplicate choices", OPTUNA, lambda d: _space(d, "training.optimizer", {
        "type": "categorical", "choices": ["Adam", "Adam"]}), OPTUNA,
     "params_to_tune.training.optimizer", "must not repeat"),
    ("unknown param type", OPTUNA, lambda d: _space(d, "training.learning_rate",
                                                    {"type": "loguniform", "low": 1, "high": 2}),
     OPTUNA, "params_to_tune.training.learning_rate.type", "unknown parameter type"),
    ("param not a mapping", OPTUNA, lambda d: _space(d, "training.learning_rate", 0.1), OPTUNA,
     "params_to_tune.training.learning_rate", "mapping"),
    ("unknown key in a param", OPTUNA, lambda d: _space(d, "training.learning_rate", {
        "type": "float", "low": 0.1, "high": 0.2, "lg": True}), OPTUNA,
     "params_to_tune.training.learning_rate.lg", "unknown key"),
    ("tuned key the trainable does not use", OPTUNA, lambda d: _space(
        d, "training.dropout", {"type": "float", "low": 0.1, "high": 0.5}), OPTUNA,
     "params_to_tune.training.dropout", "not a parameter the trainable uses"),
    ("unknown optimizer in choices", OPTUNA, lambda d: _space(d, "training.optimizer", {
        "type": "categorical", "choices": ["Adam", "RMSprop"]}), OPTUNA,
     "params_to_tune.training.optimizer.choices", "RMSprop"),
    ("unknown model in choices", OPTUNA, lambda d: _space(d, "model.name", {
        "type": "categorical", "choices": ["ResNet18", "VGG16"]}), OPTUNA,
     "params_to_tune.model.name.choices", "VGG16"),
    ("batch size range below 1", OPTUNA, lambda d: _space(d, "training.batch_size", {
        "type": "int", "low": 0, "high": 8}), OPTUNA,
     "params_to_tune.training.batch_size.low/high", "greater than or equal to 1"),
    ("no params to tune", OPTUNA, lambda d: d.update({"params_to_tune": {}}), OPTUNA,
     "params_to_tune", "no parameters"),
    ("unknown model in base_params", OPTUNA, lambda d: d["base_params"]["model"].update(
        {"name": "AlexNet"}), OPTUNA, "base_params.model.name", "ResNet18"),
    ("misspelled base_params key", OPTUNA, lambda d: d["base_params"]["training"].update(
        {"num_epoch": 2}), OPTUNA, "base_params.training.num_epoch", "unknown key"),
    ("split ratios not summing to 1", PARAMS, lambda d: d["data"].update(
        {"split_ratio": {"train": 0.5, "valid": 0.2, "test": 0.2}}), PARAMS,
     "data.split_ratio", "sum to 1"),
    ("negative learning rate", PARAMS, lambda d: d["training"].update({"learning_rate": -1}),
     PARAMS, "training.learning_rate", "greater than 0"),
    ("unknown optimizer in params.yaml", PARAMS, lambda d: d["training"].update(
        {"optimizer": "Adagrad"}), PARAMS, "training.optimizer", "Adam"),
    ("epochs zero", PARAMS, lambda d: d["training"].update({"num_epochs": 0}), PARAMS,
     "training.num_epochs", "greater than or equal to 1"),
    ("channels", PARAMS, lambda d: d["data"].update({"channels": 2}), PARAMS,
     "data.channels", "1 or 3"),
    ("patch larger than image", PARAMS, lambda d: d.update({"preprocessing": {
        "patch": {"enabled": True, "size": 64}}}), PARAMS, None, "patch.size must be <="),
    ("patch stride zero", PARAMS, lambda d: d.update({"preprocessing": {
        "patch": {"enabled": True, "size": 8, "stride": 0}}}), PARAMS,
     "preprocessing.patch.stride", "greater than or equal to 1"),
    ("train fraction zero", PARAMS, lambda d: d["data"].update(
        {"split_ratio": {"train": 0.0, "valid": 0.5, "test": 0.5}}), PARAMS,
     "data.split_ratio.train", "greater than 0"),
    ("brightness method", PARAMS, lambda d: d.update({"preprocessing": {
        "brightness_correction": {"enabled": True, "method": "gamma"}}}), PARAMS,
     "preprocessing.brightness_correction.method", "histogram_equalization"),
    ("unknown infra key", INFRA, lambda d: d.update({"max_concurent_trials": 2}), INFRA,
     "max_concurent_trials", "unknown key"),
    ("log_models value", INFRA, lambda d: d["mlflow"].update({"log_models": "some"}), INFRA,
     "mlflow.log_models", "'all'"),
    ("negative gpu", INFRA, lambda d: d["resources"].update({"gpu": -1}), INFRA,
     "resources.gpu", "greater than or equal to 0"),
    ("gpu share above 1 not whole", INFRA, lambda d: d["resources"].update({"gpu": 1.5}),
     INFRA, "resources", "whole number"),
    ("max_concurrent_trials zero", INFRA, lambda d: d.update({"max_concurrent_trials": 0}),
     INFRA, "max_concurrent_trials", "greater than or equal to 1"),
    ("scheduler type", INFRA, lambda d: d.update({"scheduler": {"type": "hyperband"}}), INFRA,
     "scheduler.type", "asha"),
    ("flip probability", AUG, lambda d: d.update({"horizontal_flip": 2}), AUG,
     "horizontal_flip", "less than or equal to 1"),
    ("unknown augment", AUG, lambda d: d.update({"mixup": 0.2}), AUG, "mixup", "unknown key"),
    # Past 64 bits SQLite overflows; past the bounds of params.py a count is a typo.
    ("n_trials past 64 bits", OPTUNA, lambda d: d["study"].update({"n_trials": 2**70}), OPTUNA,
     "study.n_trials", "less than or equal to 100000"),
    ("timeout nan", OPTUNA, lambda d: d["study"].update({"timeout": math.nan}), OPTUNA,
     "study.timeout", "finite number"),
    ("learning rate inf", PARAMS, lambda d: d.update({"training": {"learning_rate": math.inf}}),
     PARAMS, "training.learning_rate", "finite number"),
    ("batch size past 64 bits", PARAMS, lambda d: d.update({"training": {"batch_size": 2**64}}),
     PARAMS, "training.batch_size", "less than or equal to 65536"),
    ("seed numpy cannot take", PARAMS, lambda d: d["data"].update({"seed": 2**40}), PARAMS,
     "data.seed", "less than or equal to 4294967295"),
    ("max_concurrent_trials huge", INFRA, lambda d: d.update({"max_concurrent_trials": 2**70}),
     INFRA, "max_concurrent_trials", "less than or equal to 1000"),
    ("cpu inf", INFRA, lambda d: d["resources"].update({"cpu": math.inf}), INFRA,
     "resources.cpu", "finite number"),
    ("int range past 64 bits", OPTUNA, lambda d: d["params_to_tune"].update(
        {"training.num_epochs": {"type": "int", "low": 1, "high": 2**70}}), OPTUNA,
     "params_to_tune.training.num_epochs.high", "less than or equal to"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_config_names_file_key_and_fix(config_dir, case):
    _, name, change, want_file, want_key, words = case
    edit(config_dir, name, change)
    with pytest.raises(ConfigError) as info:
        load(config_dir)
    line = info.value.one_line()
    assert "\n" not in line
    assert want_file in line
    if want_key:
        assert f"key '{want_key}'" in line
    assert words in line
    assert "Fix:" in line
    assert info.value.exit_code == 2


def test_yaml_syntax_error_names_the_line(config_dir):
    (config_dir / PARAMS).write_text("training:\n  run_name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load(config_dir)
    assert "params.yaml" in str(info.value) and "YAML syntax error at line" in str(info.value)


def test_missing_file(config_dir):
    (config_dir / AUG).unlink()
    with pytest.raises(ConfigError, match="augments.yaml: file not found"):
        load(config_dir)


def test_top_level_list_is_refused(config_dir):
    (config_dir / INFRA).write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load(config_dir)


def test_missing_theme_id(config_dir):
    with pytest.raises(ConfigError, match="no theme given"):
        load(config_dir, theme_id=None)  # tiny configs set no theme: --theme-id is required


@pytest.mark.parametrize("kwargs, flag", [({"n_trials": 0}, "--n-trials"),
                                          ({"timeout": -1.0}, "--timeout"),
                                          ({"timeout": math.inf}, "--timeout"),
                                          ({"max_concurrent_trials": 0},
                                           "--max-concurrent-trials"),
                                          ({"n_trials": 2**70}, "--n-trials"),
                                          ({"timeout": 1e12}, "--timeout"),
                                          ({"max_concurrent_trials": 2**70},
                                           "--max-concurrent-trials")])
def test_bad_cli_values(config_dir, kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        load(config_dir, theme_id=1, **kwargs)


def test_categorical_bool_and_int_are_distinct_choices():
    spec = CategoricalParam(type="categorical", choices=[1, True])
    assert spec.choices == [1, True]


def test_copy_of_configs_folder_loads(tmp_path):
    target = tmp_path / "c"
    shutil.copytree(ROOT / "configs", target)
    assert load(target, theme_id=5).theme_id == 5
