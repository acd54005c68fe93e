"""`model.weights`: an optional local state_dict file to start from; layers whose shape
differs are skipped. (That it is applied after `model.pretrained`:
tests/tuning/test_pretrained.py; that every trial of a study starts from it:
tests/test_launch_promises.py.)"""

from __future__ import annotations

import pytest
import torch
import torchvision

from tests.conftest import tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.errors import ConfigError
from tuning.study import prepare_study
from tuning.trial.model import build_model


def test_layers_whose_shape_differs_are_skipped(tmp_path):
    torch.manual_seed(7)
    # 3 input channels and 10 classes: conv1 and fc do not fit a 1-channel, 4-class model.
    state = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    torch.save(state, tmp_path / "start.pt")

    torch.manual_seed(0)
    loaded = build_model("ResNet18", num_classes=4, in_channels=1,
                         weights=str(tmp_path / "start.pt")).state_dict()
    torch.manual_seed(0)
    fresh = build_model("ResNet18", num_classes=4, in_channels=1).state_dict()

    skipped = {"conv1.weight", "fc.weight", "fc.bias"}
    assert set(loaded) == set(fresh)
    for key in loaded:
        if key in skipped:   # kept as the model built them, in their own shape
            assert torch.equal(loaded[key], fresh[key]), key
        else:                # everything else comes from the file
            assert torch.equal(loaded[key], state[key]), key
    assert loaded["conv1.weight"].shape == (64, 1, 7, 7)
    assert loaded["fc.weight"].shape == (4, 512)
    # The file really differs where it was taken, so the check above means something.
    assert not torch.equal(fresh["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_missing_weights_file_is_refused_at_start(tmp_path, mlflow_uri, digits_theme):
    """Bad input is refused before anything starts (README "Configs"; "Failure modes":
    exit 2, nothing created): not a FAILED trial once Ray runs."""
    missing = tmp_path / "no-such-weights.pt"
    configs = tiny_config_files(tmp_path / "configs", base={
        "model": {"name": "ResNet18", "weights": str(missing)},
        "training": {"num_epochs": 1, "run_name": "base_run", "batch_size": 16},
        "data": {"split_ratio": {"train": 0.6, "valid": 0.2, "test": 0.2}, "seed": 3}})
    config = load_study_config(ConfigFiles.in_folder(configs),
                               Overrides(theme_id=digits_theme.id))
    with pytest.raises(ConfigError) as error:
        prepare_study(config, digits_theme)
    assert "model.weights" in str(error.value) and str(missing) in str(error.value)
