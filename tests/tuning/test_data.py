"""prepare_data: splitting, patches, preprocessing, the disk cache, and the user's errors."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuning.data import PreprocessSettings, decode, keys, prepare_data
from tuning.data.theme import Sample, ThemeSpec
from tuning.errors import DataError

BASE = PreprocessSettings(image_size=8, channels=3, brightness=None, patch_size=None,
                          patch_stride=None, split=(0.6, 0.2, 0.2), seed=0,
                          skip_unreadable=False)


def write_images(folder: Path, count: int, *, size=8, mode="RGB", seed=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, bands), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)
        path = folder / f"{i}.png"
        image.save(path)
        paths.append(path)
    return paths


def make_theme(root: Path, counts: dict[str, int], **kwargs) -> ThemeSpec:
    samples = []
    for label, (name, count) in enumerate(counts.items()):
        for path in write_images(root / name, count, seed=label, **kwargs):
            samples.append(Sample(path=str(path), label=label))
    return theme_of(root, tuple(counts), samples)


def theme_of(root: Path, class_names, samples) -> ThemeSpec:
    return ThemeSpec(id=1, name="t", class_names=tuple(class_names), samples=tuple(samples),
                     media_root=str(root))


def prepare(theme, settings=BASE, tmp_path=None, **kwargs):
    return prepare_data(theme, settings, cache_dir=Path(theme.media_root).parent / "cache",
                        **kwargs)


def all_sources(prepared):
    return [set(getattr(prepared, name).sources.tolist()) for name in ("train", "valid", "test")]


# --- splitting --------------------------------------------------------------------------

def test_split_is_stratified_by_class_and_sources_are_disjoint(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 20, "b": 10, "c": 5})
    prepared = prepare(theme)
    train, valid, test = all_sources(prepared)
    assert not (train & valid or train & test or valid & test)
    assert train | valid | test == set(range(35))
    for split, expected in zip((prepared.train, prepared.valid, prepared.test),
                               ((12, 6, 3), (4, 2, 1), (4, 2, 1))):
        assert tuple(np.bincount(split.labels, minlength=3)) == expected
        assert split.images.dtype == np.uint8 and split.images.flags.c_contiguous
        assert split.images.shape[1:] == (3, 8, 8)
        assert split.labels.dtype == np.int64 and split.sources.dtype == np.int64
        labels = [theme.samples[s].label for s in split.sources]
        assert split.labels.tolist() == labels


def test_each_nonzero_split_gets_an_image_of_every_class(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 3, "b": 4})
    prepared = prepare(theme, replace(BASE, split=(0.9, 0.05, 0.05)))
    for split in (prepared.train, prepared.valid, prepared.test):
        assert set(split.labels.tolist()) == {0, 1}


def test_zero_fraction_split_is_empty(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 5})
    prepared = prepare(theme, replace(BASE, split=(0.8, 0.2, 0.0)))
    assert (len(prepared.train), len(prepared.valid), len(prepared.test)) == (4, 1, 0)
    assert prepared.test.images.shape == (0, 3, 8, 8)


def test_split_is_deterministic_with_the_seed(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 30, "b": 30})
    first = all_sources(prepare(theme))
    again = all_sources(prepare_data(theme, BASE, cache_dir=tmp_path / "other-cache"))
    assert first == again
    assert all_sources(prepare(theme, replace(BASE, seed=1))) != first


# --- patches ----------------------------------------------------------------------------

def test_patches_are_cut_after_resize_and_stay_with_their_source(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 10, "b": 10}, size=20)
    whole = prepare(theme, replace(BASE, image_size=16))
    patched = prepare(theme, replace(BASE, image_size=16, patch_size=8, patch_stride=4))
    assert all_sources(whole) == all_sources(patched)
    for name in ("train", "valid", "test"):
        split = getattr(patched, name)
        assert split.images.shape[1:] == (3, 8, 8)
        # 16 px, 8 px patches every 4 px: 3 x 3 patches per image.
        assert len(split) == 9 * len(getattr(whole, name))
        assert set(np.bincount(split.sources)[split.sources]) == {9}
    source = int(whole.train.sources[0])
    image = whole.train.images[0]
    patches = patched.train.images[patched.train.sources == source]
    expected = [image[:, r:r + 8, c:c + 8] for r in (0, 4, 8) for c in (0, 4, 8)]
    np.testing.assert_array_equal(patches, np.stack(expected))


def test_patch_stride_defaults_to_patch_size(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 5})
    prepared = prepare(theme, replace(BASE, image_size=8, patch_size=4))
    assert len(prepared.train) == 3 * 4


# --- preprocessing ----------------------------------------------------------------------

def single(tmp_path, image: Image.Image, settings) -> np.ndarray:
    """Preprocess one image: a theme of three copies, so that every split gets one."""
    root = tmp_path / "media"
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(3):
        path = root / f"{i}.png"
        image.save(path)
        samples.append(Sample(str(path), 0))
    prepared = prepare(theme_of(root, ("x",), samples), settings)
    return prepared.train.images[0]


def test_histogram_equalization_stretches_a_low_contrast_image(tmp_path):
    pixels = np.tile(np.arange(100, 116, dtype=np.uint8), (16, 1))
    image = Image.fromarray(pixels, "L")
    settings = replace(BASE, image_size=16, channels=1)
    plain = single(tmp_path, image, settings)
    equalize = replace(settings, brightness="histogram_equalization")
    equalized = single(tmp_path / "eq", image, equalize)
    assert plain.max() - plain.min() <= 15
    assert equalized.min() == 0 and equalized.max() == 255
    # Equalization keeps the order of grey levels.
    assert (np.diff(equalized[0].astype(int), axis=1) > 0).all()


def test_histogram_equalization_is_per_channel(tmp_path):
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(100, 116)
    pixels[..., 1] = 7                    # constant: stays as it is
    pixels[..., 2] = np.arange(0, 256, 16)
    out = single(tmp_path, Image.fromarray(pixels, "RGB"),
                 replace(BASE, image_size=16, brightness="histogram_equalization"))
    np.testing.assert_array_equal(out[0], out[2])
    assert (out[1] == 7).all()


def test_grayscale_image_becomes_three_equal_channels(tmp_path):
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    out = single(tmp_path, image, BASE)
    assert out.shape == (3, 8, 8)
    np.testing.assert_array_equal(out[0], np.arange(64).reshape(8, 8))
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_rgb_image_becomes_luminance_with_one_channel(tmp_path):
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    out = single(tmp_path, image, replace(BASE, channels=1))
    assert out.shape == (1, 8, 8)
    assert (out == image.convert("L").getpixel((0, 0))).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_rgba_is_composited_on_black(tmp_path, channels):
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[..., :3] = (255, 255, 255)
    pixels[:4, :, 3] = 255   # top half opaque white, bottom half transparent white
    out = single(tmp_path, Image.fromarray(pixels, "RGBA"), replace(BASE, channels=channels))
    assert out.shape == (channels, 8, 8)
    assert (out[:, :4] == 255).all()
    assert (out[:, 4:] == 0).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    pixels = np.full((8, 8), 32768, dtype=np.uint16)
    out = single(tmp_path, Image.fromarray(pixels), replace(BASE, channels=1))
    assert (out == 128).all()


def test_images_are_resized_to_a_square(tmp_path):
    image = Image.new("RGB", (30, 10), (10, 20, 30))
    out = single(tmp_path, image, replace(BASE, image_size=12))
    assert out.shape == (3, 12, 12)
    assert (out[2] == 30).all()


# --- cache ------------------------------------------------------------------------------

def forbid(monkeypatch, *functions):
    for module, name in functions:
        def fail(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} must not run on a warm start")
        monkeypatch.setattr(module, name, fail)


def test_second_call_loads_from_cache_without_decoding_or_hashing(tmp_path, monkeypatch):
    theme = make_theme(tmp_path / "media", {"a": 6, "b": 6})
    cold = prepare(theme)
    assert not cold.from_cache
    forbid(monkeypatch, (decode, "decode_chunk"), (keys, "content_key"))
    messages = []
    warm = prepare(theme, progress=messages.append)
    assert warm.from_cache and warm.cache_key == cold.cache_key
    assert messages and "cache" in messages[0]
    for name in ("train", "valid", "test"):
        for field in ("images", "labels", "sources"):
            np.testing.assert_array_equal(getattr(getattr(warm, name), field),
                                          getattr(getattr(cold, name), field))


def test_touched_file_is_rehashed_and_still_hits_the_cache(tmp_path, monkeypatch):
    theme = make_theme(tmp_path / "media", {"a": 6})
    cold = prepare(theme)
    path = theme.samples[0].path
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    forbid(monkeypatch, (decode, "decode_chunk"))
    warm = prepare(theme)
    assert warm.from_cache and warm.cache_key == cold.cache_key


def test_changed_content_or_settings_change_the_key(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 6})
    key = prepare(theme).cache_key
    assert prepare(theme, replace(BASE, seed=5)).cache_key != key
    Image.new("RGB", (8, 8), (1, 2, 3)).save(theme.samples[2].path)
    changed = prepare(theme)
    assert not changed.from_cache and changed.cache_key != key


def test_failed_write_leaves_no_cache_entry(tmp_path, monkeypatch):
    theme = make_theme(tmp_path / "media", {"a": 6})
    cache = tmp_path / "cache"

    def crash(path, **arrays):
        Path(path).write_bytes(b"half an npz")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare_data(theme, BASE, cache_dir=cache)
    assert [p for p in cache.iterdir() if p.name != "by-stat"] == []
    monkeypatch.undo()
    assert not prepare_data(theme, BASE, cache_dir=cache).from_cache
    assert prepare_data(theme, BASE, cache_dir=cache).from_cache


def test_a_dry_run_reads_the_cache_but_never_writes_it(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 6, "b": 6})
    cache = tmp_path / "cache"
    dry = prepare_data(theme, BASE, cache_dir=cache, store=False)
    assert not cache.exists() and not dry.from_cache
    prepare_data(theme, BASE, cache_dir=cache)
    written = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    assert prepare_data(theme, BASE, cache_dir=cache, store=False).from_cache
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == written


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 6})
    key = prepare(theme).cache_key
    (tmp_path / "cache" / key / "data.npz").write_bytes(b"garbage")
    again = prepare(theme)
    assert not again.from_cache and again.cache_key == key
    assert prepare(theme).from_cache


def test_progress_is_reported_about_every_tenth(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "_CHUNK", 25)
    theme = make_theme(tmp_path / "media", {"a": 250}, size=4)
    messages = []
    prepare(theme, progress=messages.append)
    decoded = [m for m in messages if m.startswith("decoded")]
    assert 10 <= len(decoded) <= 11 and "100%" in decoded[-1]


def test_threaded_decoding_gives_the_same_arrays(tmp_path, monkeypatch):
    theme = make_theme(tmp_path / "media", {"a": 12, "b": 12}, size=12)
    settings = replace(BASE, brightness="histogram_equalization")
    single_threaded = prepare(theme, settings)
    monkeypatch.setattr(decode, "_THREADED_MIN_MEAN_BYTES", 0)
    monkeypatch.setattr(decode, "DECODE_WORKERS", 3)
    monkeypatch.setattr(decode, "_CHUNK", 5)
    threaded = prepare_data(theme, settings, cache_dir=tmp_path / "threaded-cache")
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(threaded, name).images,
                                      getattr(single_threaded, name).images)


# --- errors -----------------------------------------------------------------------------

def test_empty_theme_is_an_error(tmp_path):
    with pytest.raises(DataError, match="has no images"):
        prepare(theme_of(tmp_path / "media", ("a",), []))


def test_too_few_images_in_a_class_names_the_class_and_the_fix(tmp_path):
    theme = make_theme(tmp_path / "media", {"big": 10, "small": 2})
    with pytest.raises(DataError) as info:
        prepare(theme)
    message = str(info.value)
    assert "at least 3" in message and "'small' has 2" in message and "big" not in message
    assert "data.split_ratio" in message and "\n" not in message
    assert not (tmp_path / "cache").exists()


def test_unreadable_files_are_listed(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 6})
    bad = [tmp_path / "media" / f"bad{i}.png" for i in range(7)]
    for path in bad:
        path.write_bytes(b"not an image")
    theme = theme_of(tmp_path / "media", ("a",),
                     list(theme.samples) + [Sample(str(p), 0) for p in bad])
    with pytest.raises(DataError) as info:
        prepare(theme)
    message = str(info.value)
    assert str(bad[0]) in message and str(bad[4]) in message and str(bad[5]) not in message
    assert "and 2 more" in message
    assert "skip_unreadable: true" in message and "\n" not in message


def test_skip_unreadable_skips_and_reports_them(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 6})
    broken = tmp_path / "media" / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    missing = tmp_path / "media" / "missing.png"
    theme = theme_of(tmp_path / "media", ("a",),
                     list(theme.samples) + [Sample(str(broken), 0), Sample(str(missing), 0)])
    settings = replace(BASE, skip_unreadable=True)
    for attempt in range(2):   # cold, then from the cache
        prepared = prepare(theme, settings)
        assert prepared.from_cache == bool(attempt)
        assert prepared.skipped == (str(broken), str(missing))
        assert set().union(*all_sources(prepared)) == set(range(6))


def test_path_outside_media_root_is_refused(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 3})
    outside = write_images(tmp_path / "elsewhere", 1)[0]
    theme = theme_of(tmp_path / "media", ("a",), list(theme.samples) + [Sample(str(outside), 0)])
    with pytest.raises(DataError, match="refused") as info:
        prepare(theme)
    assert str(outside) in str(info.value)


def test_symlink_leaving_media_root_is_refused(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 3})
    outside = write_images(tmp_path / "elsewhere", 1)[0]
    link = tmp_path / "media" / "link.png"
    link.symlink_to(outside)
    theme = theme_of(tmp_path / "media", ("a",), list(theme.samples) + [Sample(str(link), 0)])
    with pytest.raises(DataError, match="refused"):
        prepare(theme)
    dotdot = Sample(str(tmp_path / "media" / ".." / "elsewhere" / "0.png"), 0)
    with pytest.raises(DataError, match="refused"):
        prepare(theme_of(tmp_path / "media", ("a",), list(theme.samples[:3]) + [dotdot]))


def test_symlink_inside_media_root_is_accepted(tmp_path):
    theme = make_theme(tmp_path / "media", {"a": 3})
    link = tmp_path / "media" / "link.png"
    link.symlink_to(theme.samples[0].path)
    theme = theme_of(tmp_path / "media", ("a",), list(theme.samples) + [Sample(str(link), 0)])
    assert len(prepare(theme).train) == 2


