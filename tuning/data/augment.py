"""Batch augmentations that run on the device the batch is already on.

The training data sits on the device as uint8; a per-sample CPU pipeline would copy it
back and forth and spend more time in Python than the GPU spends on a small ResNet step.
So every transform here handles the whole batch with tensor ops, draws its randomness
from a generator on the batch's device, and never reads a value back to the host.

The photometric transforms (brightness, contrast) assume values in [0, 1], before
normalization: scaling a normalized tensor would scale around the dataset mean rather
than around black (theme_classifier.preprocess: to_unit, augment, then standardize).
The values were checked when augments.yaml was loaded (tuning.config.infra.AugmentsConfig).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    horizontal_flip: float = 0.0   # probability per image
    vertical_flip: float = 0.0     # probability per image
    random_crop_padding: int = 0   # pad by this many pixels, then crop back at a random offset
    brightness: float = 0.0        # multiply by U(1-b, 1+b), per image
    contrast: float = 0.0          # scale around the image mean by U(1-c, 1+c), per image

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


def augment_batch(x: torch.Tensor, settings: AugmentSettings,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly augment a float (N, C, H, W) batch with values in [0, 1].

    Returns a new tensor of the same shape, dtype and device; the input is not modified.
    `generator`, if given, must live on x's device (a CPU generator cannot feed CUDA ops
    without a copy); None uses that device's default generator.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augment_batch expects a float (N, C, H, W) tensor, "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, batch on {x.device}")
    if not settings.enabled or x.shape[0] == 0:
        return x.clone()
    if settings.random_crop_padding:
        x = _random_crop(x, settings.random_crop_padding, generator)
    if settings.horizontal_flip:
        x = _random_flip(x, settings.horizontal_flip, dim=3, generator=generator)
    if settings.vertical_flip:
        x = _random_flip(x, settings.vertical_flip, dim=2, generator=generator)
    if settings.brightness:
        x = x * _uniform_factor(x, settings.brightness, generator)
    if settings.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform_factor(x, settings.contrast, generator) + mean
    if settings.brightness or settings.contrast:
        x = x.clamp(0.0, 1.0)
    return x if x.is_contiguous() else x.contiguous()


def _random_flip(x, p: float, *, dim: int, generator) -> torch.Tensor:
    # Flipping the whole batch and selecting costs one extra copy, but no sync and no
    # boolean indexing (whose output size would have to be read back from the device).
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(dim), x)


def _random_crop(x, padding: int, generator) -> torch.Tensor:
    """Pad each image, then cut it back to its size at a per-image random offset in one gather."""
    n, _, h, w = x.shape
    # Reflect padding keeps the statistics of the border; it needs padding < size.
    mode = "reflect" if padding < min(h, w) else "constant"
    padded = F.pad(x, (padding, padding, padding, padding), mode=mode)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = dy[:, None] + torch.arange(h, device=x.device)        # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)        # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around the channel slice: result is (N, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def _uniform_factor(x, amount: float, generator) -> torch.Tensor:
    u = torch.rand(x.shape[0], device=x.device, generator=generator, dtype=torch.float32)
    return (1.0 - amount + 2.0 * amount * u).to(x.dtype)[:, None, None, None]
