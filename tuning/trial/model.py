"""The classifiers a trial trains: torchvision ResNets, built without downloading weights.

A model starts random, from torchvision's ImageNet weights (a state dict the driver read
once, see tuning.trial.pretrained), or from a local state_dict file (model.weights); with
model.freeze_backbone only its classifier trains.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from theme_classifier.network import ARCHITECTURES, build_network
from tuning.errors import ConfigError


def build_model(name: str, *, num_classes: int, in_channels: int = 3,
                weights: str | None = None,
                imagenet_state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A ResNet for `num_classes`; `imagenet_state` (torchvision's 1000-class weights)
    fills every layer but the classifier, then `weights` (a local file) on top."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown model {name!r}.", key="model.name",
                          fix=f"use one of: {', '.join(ARCHITECTURES)}.")
    # The shipped model (theme_classifier) builds the same network to load the weights.
    model = build_network(name, num_classes=num_classes, in_channels=in_channels)
    if imagenet_state is not None:
        load_imagenet_backbone(model, imagenet_state, in_channels=in_channels)
    if weights:
        load_pretrained(model, Path(weights))
    return model


def load_imagenet_backbone(model: nn.Module, state: dict[str, torch.Tensor], *,
                           in_channels: int) -> None:
    """Every ImageNet layer but the classifier, which stays new for the theme's classes."""
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if in_channels == 1:
        # A gray image is R = G = B, so a filter bank summed over its RGB inputs gives the
        # pretrained response to the gray image repeated three times, without the copies.
        backbone["conv1.weight"] = backbone["conv1.weight"].sum(dim=1, keepdim=True)
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
        # tuning.trial.pretrained checked the file against the architecture: this is a bug.
        raise RuntimeError(f"ImageNet state does not fit the model: missing {missing}, "
                           f"unexpected {unexpected}")


def freeze_backbone(model: nn.Module) -> None:
    """Train the classifier only (a linear probe): the optimizer gets fc's parameters,
    and set_train_mode keeps the frozen BatchNorm layers' running statistics."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("fc.")


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except BatchNorm layers whose parameters are frozen stay in eval.

    In train mode a BatchNorm normalizes with the batch's statistics and overwrites its
    running ones; a frozen backbone must compute what the pretrained file computes.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def load_pretrained(model: nn.Module, path: Path) -> None:
    """Load a local state_dict, skipping layers whose shape differs (e.g. the classifier)."""
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}.", key="model.weights",
                          fix="point it to a local state_dict file, or remove the key.")
    try:
        state = load_state_file(path)
    except LOAD_ERRORS as exc:
        raise ConfigError(f"weights file cannot be read as a state_dict: {path} "
                          f"({load_problem(exc)}).", key="model.weights",
                          fix="save it with torch.save(model.state_dict()).") from None
    problem = state_dict_problem(state)
    if problem is not None:
        raise ConfigError(f"weights file does not hold a state_dict: {path} ({problem}).",
                          key="model.weights", fix="save it with torch.save(model.state_dict()).")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"weights file shares no layer with the model: {path}.",
                          key="model.weights", fix="use weights saved from the same architecture.")
    model.load_state_dict(usable, strict=False)


# What torch.load raises for a file that is not a state_dict it may load: garbage, an
# empty or cut file, a damaged archive, a pickle of arbitrary objects.
LOAD_ERRORS = (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError,
               zipfile.BadZipFile, AttributeError, ImportError, IndexError, KeyError,
               TypeError, UnicodeDecodeError)


def load_state_file(path: Path):
    """torch.load of tensors only (no code runs from the file), its warnings silenced:
    errors are told by the caller in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def load_problem(exc: BaseException) -> str:
    """Why torch.load refused a file, in a few words. Never torch's own advice to load
    with weights_only=False: that runs whatever code the file holds."""
    if isinstance(exc, pickle.UnpicklingError):
        return ("not a file written by torch.save, or it holds objects other than tensors, "
                "which are not loaded")
    if isinstance(exc, EOFError):
        return "the file is empty or cut short"
    if isinstance(exc, zipfile.BadZipFile):
        return "a damaged torch.save archive"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if not first or "weights_only" in text or "pickle" in text.lower():
        return f"not a file written by torch.save ({type(exc).__name__})"
    return first[:200]


def state_dict_problem(state) -> str | None:
    """Why a loaded object is not a state_dict (names to tensors); None when it is one."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}"
    if not state:
        return "it is empty"
    if not all(isinstance(k, str) for k in state):
        return "its keys are not layer names"
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "its values are not all tensors"
    return None
