"""Pretrained starts and frozen backbones: torchvision's weights file from a local
TORCH_HOME (planted here, random: there is no internet), never a download."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import optuna.distributions as od
import pytest
import torch
import torchvision

from tests.conftest import make_site, tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.config.params import TrainingParams
from tuning.config.search_space import to_distributions
from tuning.data import Split
from tuning.errors import ConfigError
from tuning.trial.model import build_model, freeze_backbone
from tuning.trial.pretrained import load_imagenet_state, load_study_weights
from tuning.trial.trainable import DeviceSplit, load_state_dict, make_optimizer, train_epoch

ROOT = Path(__file__).resolve().parents[2]
RESNET18_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
RESNET18_FILE = Path(urlparse(RESNET18_URL).path).name          # resnet18-f37072fd.pth
RESNET50_FILE = Path(urlparse(torchvision.models.ResNet50_Weights.DEFAULT.url).path).name
SMALL_PARAMS = {"training": {"run_name": "pretrained_run"},
                "data": {"image_size": 16, "channels": 1}}


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def plant_resnet18(torch_home: Path) -> dict[str, torch.Tensor]:
    """A random ResNet18 saved where torchvision keeps IMAGENET1K_V1, with BatchNorm
    statistics and affine values unlike a fresh model's, so that a layer that kept
    the file's values can be told from one that was re-initialized or trained."""
    generator = torch.Generator().manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
        elif key.endswith("running_var") or (key.endswith("weight") and value.ndim == 1):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / RESNET18_FILE)
    return state


def backbone_keys(state: dict) -> list[str]:
    return [k for k in state if not k.startswith("fc.") and k != "conv1.weight"]


def study_config(folder: Path, theme_id: int = 1, **kwargs):
    kwargs.setdefault("params", SMALL_PARAMS)
    configs = tiny_config_files(folder, **kwargs)
    return load_study_config(ConfigFiles.in_folder(configs), Overrides(theme_id=theme_id))


# -------------------------------------------------------------- the model, no Ray

@pytest.mark.parametrize("channels", [3, 1])
def test_backbone_comes_from_the_file_and_classifier_is_new(torch_home, channels):
    planted = plant_resnet18(torch_home)
    model = build_model("ResNet18", num_classes=4, in_channels=channels,
                        imagenet_state=load_imagenet_state("ResNet18"))
    state = model.state_dict()
    for key in backbone_keys(planted):
        assert torch.equal(state[key], planted[key]), key
    expected_conv1 = planted["conv1.weight"]
    if channels == 1:
        # Grayscale keeps the pretrained filters, summed over their RGB inputs.
        expected_conv1 = expected_conv1.sum(dim=1, keepdim=True)
    torch.testing.assert_close(state["conv1.weight"], expected_conv1)
    assert state["fc.weight"].shape == (4, 512) and state["fc.bias"].shape == (4,)
    assert not torch.equal(state["fc.weight"], planted["fc.weight"][:4])


def test_local_weights_file_still_loads_and_wins_over_imagenet(torch_home, tmp_path):
    planted = plant_resnet18(torch_home)
    own = build_model("ResNet18", num_classes=4, in_channels=1).state_dict()
    torch.save(own, tmp_path / "own.pt")
    alone = build_model("ResNet18", num_classes=4, in_channels=1,
                        weights=str(tmp_path / "own.pt")).state_dict()
    both = build_model("ResNet18", num_classes=4, in_channels=1,
                       weights=str(tmp_path / "own.pt"),
                       imagenet_state=load_imagenet_state("ResNet18")).state_dict()
    for key in own:
        assert torch.equal(alone[key], own[key]), key
        assert torch.equal(both[key], own[key]), key
    assert not torch.equal(both["layer1.0.bn1.running_mean"],
                           planted["layer1.0.bn1.running_mean"])


def test_frozen_backbone_trains_only_the_classifier(torch_home):
    planted = plant_resnet18(torch_home)
    model = build_model("ResNet18", num_classes=3, in_channels=3,
                        imagenet_state=load_imagenet_state("ResNet18"))
    freeze_backbone(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    optimizer = make_optimizer(TrainingParams.model_validate(
        {"training": {"optimizer": "SGD", "learning_rate": 0.1, "weight_decay": 0.01}}), model)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(model.fc.weight), id(model.fc.bias)}

    rng = np.random.default_rng(0)
    split = Split(images=rng.integers(0, 256, (12, 3, 16, 16), dtype=np.uint8),
                  labels=rng.integers(0, 3, 12).astype(np.int64),
                  sources=np.arange(12, dtype=np.int64))
    fc_before = model.fc.weight.detach().clone()
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    train_epoch(model, optimizer, DeviceSplit(split, torch.device("cpu")), mean, std,
                batch_size=4, augments=None, generator=torch.Generator().manual_seed(0))
    state = model.state_dict()
    for key in backbone_keys(planted) + ["conv1.weight"]:
        # Weights, BatchNorm affine values and running statistics: all the file's.
        assert torch.equal(state[key], planted[key]), key
    assert not torch.equal(model.fc.weight, fc_before)


# -------------------------------------------------------------- checks at start

def test_missing_file_fails_prepare_study_naming_file_folder_and_url(
        torch_home, tmp_path, digits_theme):
    from tuning.study import prepare_study

    config = study_config(tmp_path / "configs", params={
        **SMALL_PARAMS, "model": {"pretrained": True}})
    with pytest.raises(ConfigError) as info:
        prepare_study(config, digits_theme, progress=lambda m: None)
    message = info.value.one_line()
    assert RESNET18_FILE in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert RESNET18_URL in message
    assert "params.yaml: key 'model.pretrained'" in message
    assert not (tmp_path / "configs" / "cache").exists()      # failed before the data


def test_booleans_tune_and_each_pretrained_architecture_is_checked(torch_home, tmp_path):
    plant_resnet18(torch_home)
    config = study_config(tmp_path / "configs", space={
        "model.name": {"type": "categorical", "choices": ["ResNet18", "ResNet50"]},
        "model.pretrained": {"type": "categorical", "choices": [True, False]},
        "model.freeze_backbone": {"type": "categorical", "choices": [True, False]}})
    assert to_distributions(config.space)["model.pretrained"] == od.CategoricalDistribution(
        (True, False))
    assert config.trial_params({"model.pretrained": True}).model.pretrained is True
    warnings: list[str] = []
    with pytest.raises(ConfigError) as info:
        load_study_weights(config, progress=warnings.append)
    message = info.value.one_line()
    assert RESNET50_FILE in message and RESNET18_FILE not in message
    assert "optuna_params.yaml: key 'params_to_tune.model.pretrained'" in message
    # A frozen random backbone is one combination among others: a warning, no failure.
    assert any("freeze a backbone that has no pretrained weights" in w for w in warnings)


def test_weights_are_loaded_only_for_what_some_trial_uses(torch_home, tmp_path):
    planted = plant_resnet18(torch_home)
    scratch = study_config(tmp_path / "a")
    assert load_study_weights(scratch, progress=lambda m: None) == {}
    tuned = study_config(tmp_path / "b", space={
        "model.pretrained": {"type": "categorical", "choices": [False, True]}})
    states = load_study_weights(tuned, progress=lambda m: None)
    assert list(states) == ["ResNet18"]
    assert torch.equal(states["ResNet18"]["layer2.0.bn2.running_var"],
                       planted["layer2.0.bn2.running_var"])


def test_frozen_backbone_without_any_weights_is_refused(torch_home, tmp_path):
    config = study_config(tmp_path / "configs", params={
        **SMALL_PARAMS, "model": {"freeze_backbone": True}})
    with pytest.raises(ConfigError) as info:
        load_study_weights(config, progress=lambda m: None)
    assert "params.yaml: key 'model.freeze_backbone'" in info.value.one_line()


def test_a_file_that_is_not_resnet18_weights_is_a_config_error(torch_home):
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), folder / RESNET18_FILE)
    with pytest.raises(ConfigError, match="does not hold torchvision's ResNet18"):
        load_imagenet_state("ResNet18")
    (folder / RESNET18_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read as a state_dict"):
        load_imagenet_state("ResNet18")


@pytest.mark.slow
def test_launch_dry_run_without_the_file_exits_2_with_one_line(
        tmp_path_factory, digits_folder, tmp_path):
    site = make_site(tmp_path_factory.mktemp("site"), digits_folder, theme_name="pre_digits")
    configs = tiny_config_files(tmp_path / "configs", params={
        **SMALL_PARAMS, "model": {"pretrained": True}})
    env = {**site["env"], "TORCH_HOME": str(tmp_path / "empty_torch_home")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--theme-id", str(site["theme_id"]),
         "--configs", str(configs), "--dry-run"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert RESNET18_FILE in lines[0] and RESNET18_URL in lines[0]
    assert str(tmp_path / "empty_torch_home" / "hub" / "checkpoints") in lines[0]


# -------------------------------------------------------------- a study on Ray

@pytest.mark.ray
def test_linear_probe_study_keeps_the_pretrained_backbone(
        ray_local, mlflow_uri, tmp_path, digits_theme, torch_home):
    from tuning.study import prepare_study, run_study
    from tuning.tracking.progress import ProgressDisplay

    planted = plant_resnet18(torch_home)
    folder = tmp_path / "configs"
    config = study_config(folder, theme_id=digits_theme.id, n_trials=1, epochs=1,
                          space={"training.learning_rate": {
                              "type": "float", "low": 0.005, "high": 0.01}},
                          params={**SMALL_PARAMS,
                                  "model": {"pretrained": True, "freeze_backbone": True}})
    plan = prepare_study(config, digits_theme, progress=lambda m: None)
    outcome = run_study(plan, progress=ProgressDisplay(min_interval_s=0))
    assert outcome.status == "completed"

    checkpoints = sorted((folder / "ray_results").rglob("checkpoint.pt"))
    assert checkpoints, "the trial saved no checkpoint"
    state = load_state_dict(checkpoints[-1].parent)["model"]
    for key in backbone_keys(planted):
        assert torch.equal(state[key], planted[key]), key
    torch.testing.assert_close(state["conv1.weight"],
                               planted["conv1.weight"].sum(dim=1, keepdim=True))
    # The classifier is new (the trial's seeded init) and trained away from it.
    torch.manual_seed(config.params.data.seed)
    init = build_model("ResNet18", num_classes=digits_theme.num_classes, in_channels=1)
    assert state["fc.weight"].shape == (digits_theme.num_classes, 512)
    assert not torch.equal(state["fc.weight"], init.fc.weight.detach())
