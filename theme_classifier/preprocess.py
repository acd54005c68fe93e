"""From an encoded image file to the uint8 array a network sees, and on to its input.

One definition for both sides: `tuning.data` decodes a theme with these functions,
the trainable normalizes with them, and the packaged model applies them to each image
it is asked to label.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

HISTOGRAM_EQUALIZATION = "histogram_equalization"
# Pillow's own bomb guard refuses at twice this; a server labelling uploads should not
# inflate one file to gigabytes either.
Image.MAX_IMAGE_PIXELS = 100_000_000


@dataclass(frozen=True)
class Preprocessing:
    """Everything between a decoded file and the network, as a study trained with it."""

    image_size: int                      # square side after resize
    channels: int                        # 1 (grayscale) or 3 (RGB)
    equalize: bool                       # histogram equalization per image and channel
    patch_size: int | None = None        # None: the whole image is one input
    patch_stride: int | None = None
    mean: tuple[float, ...] = ()         # the training split's per-channel statistics
    std: tuple[float, ...] = ()

    @property
    def stride(self) -> int | None:
        if self.patch_size is None:
            return None
        return self.patch_stride or self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        data = dict(data)
        data["mean"] = tuple(data.get("mean", ()))
        data["std"] = tuple(data.get("std", ()))
        return cls(**data)

    def describe(self) -> str:
        """One sentence for a registered model's description."""
        steps = [f"decoded to {'grayscale' if self.channels == 1 else 'RGB'}",
                 f"resized to {self.image_size}x{self.image_size} (bilinear)"]
        if self.equalize:
            steps.append("histogram-equalized per channel")
        if self.patch_size is not None:
            steps.append(f"cut into {self.patch_size} px patches (stride {self.stride}); "
                         f"the patches' probabilities are averaged into one per image")
        steps.append("scaled to [0, 1] and standardized with the training split's mean "
                     f"{_fmt(self.mean)} and std {_fmt(self.std)}")
        return "; ".join(steps) + "."


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


class ImageTooLargeError(ValueError):
    """The image declares more pixels than Image.MAX_IMAGE_PIXELS: likely a decompression
    bomb. A ValueError, so that every caller's "unreadable image" handling applies."""


def decode(source: str | bytes | BinaryIO, *, size: int, channels: int) -> np.ndarray:
    """One encoded image (a path, its bytes or a file object) -> uint8 (C, size, size)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        opened = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from None
    with opened as im:
        # JPEG can decode straight at 1/2..1/8 scale: big photos cost a fraction to read.
        im.draft(None, (size, size))
        _refuse_too_large(im)
        im = ImageOps.exif_transpose(im)
        im = to_mode(im, "L" if channels == 1 else "RGB")
    im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _refuse_too_large(im: Image.Image) -> None:
    # Between the limit and twice it Pillow only warns, then decodes every pixel: a PNG
    # of a few KB can declare 10^8 of them. Measured after draft(), at the scale decoded.
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:
        raise ImageTooLargeError(f"{im.width}x{im.height} pixels is over the limit of {limit} "
                                 "pixels against decompression bombs")


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # convert("L") clips 16-bit values at 255, turning most of such an image white;
        # keeping the high byte maps the 16-bit range onto 0..255 the same way for every image.
        arr = np.asarray(im).astype(np.int64).clip(0, 65535) >> 8
        im = Image.fromarray(arr.astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        # Transparent pixels become black rather than whatever colour hides under alpha 0.
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return im.convert(mode) if im.mode != mode else im


def equalize(images: np.ndarray) -> np.ndarray:
    """Histogram equalization per image and channel, with OpenCV's equalizeHist formula.

    Not PIL's ImageOps.equalize: its step is pixels // 255, which is 0 for images under
    about 256 pixels, and then it returns the image unchanged (a 16 x 16 image, say).
    Done on a chunk of images at once: a Python loop per image cost more than the decode.
    """
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w)
    rows = np.arange(n * c)[:, None]
    hist = np.bincount((rows * 256 + flat).ravel(), minlength=n * c * 256).reshape(n * c, 256)
    cdf = hist.cumsum(axis=1)
    lowest = np.take_along_axis(cdf, (hist > 0).argmax(axis=1)[:, None], axis=1)
    spread = cdf[:, -1:] - lowest
    # A band of one grey level has nothing to spread: it keeps its values.
    lut = np.where(spread > 0, np.round((cdf - lowest) * 255.0 / np.maximum(spread, 1)),
                   np.arange(256))
    return np.take_along_axis(lut.astype(np.uint8), flat, axis=1).reshape(n, c, h, w)


def cut_patches(images: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """(N, C, S, S) -> (N * patches_per_image, C, patch, patch), row-major per image."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (patch, patch), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]   # (N, C, rows, cols, p, p)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1], patch, patch)


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1]; photometric augments work here, before standardizing."""
    return batch.float().div_(255)


def standardize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch - mean) / std


def network_input(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) on the device -> what the network was trained on."""
    return standardize(to_unit(batch), mean, std)
