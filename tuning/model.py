"""The classifiers a trial trains: torchvision ResNets, built without downloading weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from tuning.errors import ConfigError

_BUILDERS = {"ResNet18": models.resnet18, "ResNet50": models.resnet50,
             "ResNet101": models.resnet101}


def build_model(name: str, *, num_classes: int, in_channels: int = 3,
                weights: str | None = None) -> nn.Module:
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown model {name!r}.", key="model.name",
                          fix=f"use one of: {', '.join(_BUILDERS)}.")
    model = builder(weights=None, num_classes=num_classes)
    if in_channels != 3:
        # Grayscale themes keep one channel end to end instead of tripling the data.
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights:
        load_pretrained(model, Path(weights))
    return model


def load_pretrained(model: nn.Module, path: Path) -> None:
    """Load a local state_dict, skipping layers whose shape differs (e.g. the classifier)."""
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}.", key="model.weights",
                          fix="point it to a local state_dict file, or remove the key.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(f"weights file cannot be read as a state_dict: {path} ({exc}).",
                          key="model.weights", fix="save it with torch.save(model.state_dict()).") from None
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"weights file shares no layer with the model: {path}.",
                          key="model.weights", fix="use weights saved from the same architecture.")
    model.load_state_dict(usable, strict=False)
