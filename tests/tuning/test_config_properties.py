"""Property: any YAML a user can write either loads into a usable StudyConfig or
raises ConfigError (exit 2, one line) -- never another exception, never a traceback.

Inputs start from a valid set of the four files and are mutated at random depths
(a value replaced, a key deleted or added, a whole file replaced by any YAML value or
by raw bytes), so that both the shallow checks and the deep ones (search space against
the trainable's parameters, split ratios, patch sizes) are reached.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tuning.config import ConfigFiles, Overrides, StudyConfig, load_study_config
from tuning.config.params import known_param_paths
from tuning.config.search_space import to_distributions
from tuning.errors import ConfigError

BASE = {
    "optuna_params": {
        "study": {"name": "prop", "direction": "maximize", "metric": "test_acc",
                  "n_trials": 3, "timeout": None, "seed": 1},
        "params_to_tune": {
            "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "training.batch_size": {"type": "int", "low": 2, "high": 16, "step": 2},
            "training.optimizer": {"type": "categorical", "choices": ["Adam", "SGD"]},
        },
        "base_params": {
            "model": {"name": "ResNet18", "num_classes": 4},
            "training": {"num_epochs": 2, "run_name": "base", "batch_size": 8},
            "data": {"split_ratio": {"train": 0.6, "valid": 0.2, "test": 0.2}, "seed": 3},
            "preprocessing": {"patch": {"enabled": False, "size": 8}},
        },
    },
    "params": {"training": {"run_name": "prop_run"},
               "data": {"image_size": 16, "channels": 1, "theme_id": 1}},
    "config": {"mlflow": {"tracking_uri": "sqlite:///mlflow.db", "log_models": "all"},
               "ray": {"storage_path": "ray_results"}, "resources": {"cpu": 1, "gpu": 0},
               "max_concurrent_trials": 2, "scheduler": {"type": "none"},
               "failure": {"max_failures": 0}},
    "augments": {"enabled": True, "random_crop_padding": 1, "horizontal_flip": 0.5},
}

# Keys the loader knows, so that random additions often hit a real field.
KNOWN_KEYS = sorted({
    "study", "params_to_tune", "base_params", "name", "direction", "metric", "n_trials",
    "timeout", "seed", "type", "low", "high", "log", "step", "choices", "model", "training",
    "data", "preprocessing", "split_ratio", "train", "valid", "test", "patch", "size",
    "stride", "enabled", "brightness_correction", "method", "mlflow", "ray", "resources",
    "cpu", "gpu", "scheduler", "grace_period", "reduction_factor", "mode", "checkpoint",
    "num_to_keep", "failure", "max_failures", "max_concurrent_trials", "cache_dir",
    "tracking_uri", "log_models", "address", "storage_path", "num_cpus", "num_gpus",
    *known_param_paths(), *(p.split(".")[-1] for p in known_param_paths())})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.integers(min_value=-3, max_value=40), st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2, max_value=2), st.text(max_size=12),
    st.sampled_from(["float", "int", "categorical", "maximize", "minimize", "test_acc",
                     "valid_loss", "ResNet50", "SGD", "asha", "none", "", "1e-3", "~"]))
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10),
                 st.sampled_from(["bad\nkey", "tab\tkey", "cr\r", "\x85", "x.y", " "]),
                 st.integers(min_value=-2, max_value=2), st.booleans(), st.none())
yamlable = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=12)


def mutate(data, tree):
    """One random edit somewhere inside `tree` (a copy is returned)."""
    tree = copy.deepcopy(tree)
    if not isinstance(tree, dict) or data.draw(st.integers(0, 9)) == 0:
        return data.draw(yamlable)
    node = tree
    while True:
        children = [k for k, v in node.items() if isinstance(v, (dict, list))]
        if not children or data.draw(st.booleans()):
            break
        key = data.draw(st.sampled_from(children))
        child = node[key]
        if isinstance(child, list):
            if child and data.draw(st.booleans()):
                child[data.draw(st.integers(0, len(child) - 1))] = data.draw(yamlable)
            else:
                child.append(data.draw(yamlable))
            return tree
        node = child
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if op != "add" and node:
        key = data.draw(st.sampled_from(list(node)))
        if op == "delete":
            del node[key]
        else:
            node[key] = data.draw(yamlable)
    else:
        node[data.draw(keys)] = data.draw(yamlable)
    return tree


def write(folder: Path, name: str, content) -> None:
    path = folder / f"{name}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
        return
    try:
        text = yaml.safe_dump(content, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)  # not something a user could have written as YAML
    path.write_text(text, encoding="utf-8")


@pytest.mark.slow
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_any_yaml_loads_or_raises_config_error(data):
    files = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 4))):
        name = data.draw(st.sampled_from(sorted(files)))
        files[name] = mutate(data, files[name])
    if data.draw(st.integers(0, 19)) == 0:
        name = data.draw(st.sampled_from(sorted(files)))
        files[name] = data.draw(st.one_of(st.binary(max_size=40),
                                          st.text(max_size=40).map(str.encode)))
    theme_id = data.draw(st.sampled_from([None, 1, 7]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, content in files.items():
            write(folder, name, content)
        try:
            config = load_study_config(ConfigFiles.in_folder(folder),
                                       Overrides(theme_id=theme_id))
        except ConfigError as exc:
            line = exc.one_line()
            assert line and "\n" not in line, line  # launch.py prints one line
            event("ConfigError")
            return
    event("loaded")
    # Loaded: it must be usable as it is, with no surprise left for the study.
    assert isinstance(config, StudyConfig)
    assert config.space and config.theme_id is not None
    to_distributions(config.space)
    json.dumps(config.resolved(), allow_nan=True)
    for name, spec in config.space.items():
        for value in spec.edge_values():
            config.trial_params({name: value})
    split = config.params.data.split_ratio
    assert math.isclose(split.train + split.valid + split.test, 1.0, abs_tol=1e-6)
