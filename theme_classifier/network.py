"""The networks a study trains, built the same way in a trial and in a shipped model."""

from __future__ import annotations

from torch import nn

# Names only: torchvision is loaded when a network is built. A driver checks names
# and never builds one until the study's end, and the import costs it about 3 s of CPU.
ARCHITECTURES = ("ResNet18", "ResNet50", "ResNet101")


def torchvision_models():
    """torchvision.models, imported on first use."""
    from torchvision import models

    return models


def build_network(name: str, *, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A randomly initialized torchvision ResNet for `num_classes` classes."""
    if name not in ARCHITECTURES:
        raise KeyError(name)
    model = getattr(torchvision_models(), name.lower())(weights=None, num_classes=num_classes)
    if in_channels != 3:
        # Grayscale themes keep one channel end to end instead of tripling the data.
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
