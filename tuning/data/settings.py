"""What preprocessing makes of a theme's images: every field is part of the cache key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PreprocessSettings:
    image_size: int                 # square side after resize
    channels: int                   # 1 (grayscale) or 3 (RGB)
    brightness: str | None          # None or "histogram_equalization"
    patch_size: int | None          # None = whole images; else patches cut after the resize
    patch_stride: int | None        # None = patch_size (patches do not overlap)
    split: tuple[float, float, float]   # train, valid, test fractions, sum 1
    seed: int
    skip_unreadable: bool

    @property
    def stride(self) -> int | None:
        if self.patch_size is None:
            return None
        return self.patch_stride if self.patch_stride is not None else self.patch_size

    @property
    def input_size(self) -> int:
        """Side of what the model sees: the patch, or else the whole resized image."""
        return self.patch_size if self.patch_size is not None else self.image_size

    @property
    def patches_per_image(self) -> int:
        if self.patch_size is None:
            return 1
        per_side = (self.image_size - self.patch_size) // self.stride + 1
        return per_side * per_side
