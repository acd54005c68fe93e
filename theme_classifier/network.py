"""The networks a study trains, built the same way in a trial and in a shipped model."""

from __future__ import annotations

from torch import nn
from torchvision import models

ARCHITECTURES = {"ResNet18": models.resnet18, "ResNet50": models.resnet50,
                 "ResNet101": models.resnet101}


def build_network(name: str, *, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A randomly initialized torchvision ResNet for `num_classes` classes."""
    model = ARCHITECTURES[name](weights=None, num_classes=num_classes)
    if in_channels != 3:
        # Grayscale themes keep one channel end to end instead of tripling the data.
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
