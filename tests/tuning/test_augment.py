"""augment_batch: batch ops that keep shape, dtype and device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuning.data.augment import AugmentSettings, augment_batch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ALL = AugmentSettings(horizontal_flip=0.5, vertical_flip=0.5, random_crop_padding=2,
                      brightness=0.3, contrast=0.3)


def batch(device="cpu", n=16, c=3, h=8, w=8, dtype=torch.float32):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def generator(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_are_kept_and_input_untouched(device, dtype):
    x = batch(device, dtype=dtype, c=1, h=6, w=10)
    before = x.clone()
    y = augment_batch(x, ALL, generator(device))
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert y.is_contiguous()
    assert torch.equal(x, before)
    assert 0.0 <= y.min() and y.max() <= 1.0


def test_disabled_settings_are_identity():
    x = batch()
    settings = AugmentSettings()
    assert not settings.enabled and ALL.enabled
    y = augment_batch(x, settings)
    assert torch.equal(x, y) and y is not x


@pytest.mark.parametrize("device", DEVICES)
def test_certain_flips_equal_torch_flip(device):
    x = batch(device)
    g = generator(device)
    assert torch.equal(augment_batch(x, AugmentSettings(horizontal_flip=1.0), g), x.flip(3))
    assert torch.equal(augment_batch(x, AugmentSettings(vertical_flip=1.0), g), x.flip(2))
    both = AugmentSettings(horizontal_flip=1.0, vertical_flip=1.0)
    assert torch.equal(augment_batch(x, both, g), x.flip(2, 3))


def test_half_flip_flips_some_images_and_keeps_the_rest():
    x = batch(n=64)
    y = augment_batch(x, AugmentSettings(horizontal_flip=0.5), generator("cpu"))
    flipped = torch.tensor([torch.equal(a, b) for a, b in zip(y, x.flip(3))])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54


@pytest.mark.parametrize("device", DEVICES)
def test_random_crop_is_a_shifted_window_of_the_padded_image(device):
    p = 2
    x = torch.arange(32 * 2 * 6 * 7, dtype=torch.float32, device=device).reshape(32, 2, 6, 7)
    y = augment_batch(x, AugmentSettings(random_crop_padding=p), generator(device))
    assert y.shape == x.shape
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    offsets = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(y[i], padded[i, :, dy:dy + 6, dx:dx + 7])]
        assert len(matches) == 1
        offsets |= set(matches)
    # The content moves, by different amounts for different images.
    assert len(offsets) > 5 and offsets != {(p, p)}


def test_crop_padding_wider_than_the_image_pads_with_zeros():
    x = torch.ones(4, 1, 2, 2)
    y = augment_batch(x, AugmentSettings(random_crop_padding=3), generator("cpu"))
    assert y.shape == x.shape and set(y.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("device", DEVICES)
def test_same_generator_seed_gives_the_same_batch(device):
    x = batch(device)
    first = augment_batch(x, ALL, generator(device, 1))
    assert torch.equal(first, augment_batch(x, ALL, generator(device, 1)))
    assert not torch.equal(first, augment_batch(x, ALL, generator(device, 2)))


def test_brightness_scales_each_image_by_one_factor():
    x = torch.full((32, 3, 4, 4), 0.5)
    y = augment_batch(x, AugmentSettings(brightness=0.2), generator("cpu"))
    factors = y.flatten(1) / 0.5
    assert torch.allclose(factors, factors[:, :1].expand_as(factors))
    assert 0.8 <= factors.min() and factors.max() <= 1.2 and factors.std() > 0.01


def test_contrast_keeps_the_image_mean():
    x = batch(n=8) * 0.5 + 0.25   # stays inside [0, 1] after +-30 % contrast
    y = augment_batch(x, AugmentSettings(contrast=0.3), generator("cpu"))
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-5)
    assert not torch.allclose(y, x)


def test_generator_on_another_device_is_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match="generator"):
        augment_batch(batch("cuda"), ALL, generator("cpu"))
