"""The resident data path: a theme's images read once per study, preprocessed, and
cached on disk as arrays that the driver `ray.put`s for every trial.

Trials never decode images: the driver calls `prepare_data` once. The cache lives under
`cache_dir/<key>/data.npz`, keyed as tuning.data.keys describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from theme_classifier.preprocess import cut_patches
from tuning.data import keys
from tuning.data.cache import ARRAYS_FILE, load_arrays, store_arrays
from tuning.data.decode import Progress, decode_all, threads_pay_off
from tuning.data.settings import PreprocessSettings
from tuning.data.split import SPLIT_NAMES, assign_readable, check_class_sizes, theme_labels
from tuning.data.theme import ThemeSpec
from tuning.data.trial_data import ChannelSums, TrialData


@dataclass(frozen=True)
class Split:
    images: np.ndarray   # uint8, (N, C, H, W), C-contiguous
    labels: np.ndarray   # int64, (N,)
    sources: np.ndarray  # int64, (N,): index into theme.samples; patches of one image share it

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PreparedData(TrialData[Split]):
    mode = "resident"   # the streaming path's counterpart: tuning.data.shards.ShardedData


def prepare_data(theme: ThemeSpec, settings: PreprocessSettings, *, cache_dir: Path,
                 progress: Progress | None = None, store: bool = True) -> PreparedData:
    """Decode, preprocess and split the theme's images, or load them from the cache.
    `store=False` (a dry run) reads the cache but writes nothing."""
    report = progress or (lambda message: None)
    labels = theme_labels(theme)
    paths = [s.path for s in theme.samples]
    stats = keys.stat_inside_root(paths, theme.media_root)

    cache_dir = Path(cache_dir)
    key = keys.find_key(cache_dir, paths, stats, labels, settings)
    cached = load_arrays(cache_dir / key.content / ARRAYS_FILE)
    if cached is not None:
        if not key.linked and store:
            keys.link(cache_dir, key)
        report(f"preprocessed images of theme '{theme.name}' loaded from cache "
               f"{cache_dir / key.content}")
        return _prepared(cached, theme, key.content, from_cache=True)

    # Fail on too small classes before spending the decode; checked again after skipping.
    check_class_sizes(labels, np.ones(len(labels), dtype=bool), settings, theme.class_names)
    images, reasons = decode_all(paths, settings, report, threaded=threads_pay_off(stats))
    ok, assignment = assign_readable(theme, labels, reasons, settings)
    arrays = _build_splits(images, labels, assignment, settings)
    arrays["skipped_sources"] = np.flatnonzero(~ok).astype(np.int64)
    if store:
        store_arrays(cache_dir, key.content, arrays)
        keys.link(cache_dir, key)
    return _prepared(arrays, theme, key.content, from_cache=False)


def _build_splits(images, labels, assignment, settings) -> dict[str, np.ndarray]:
    """Gather each split's images (cut into patches if asked) in source order."""
    arrays = {}
    for index, name in enumerate(SPLIT_NAMES):
        sources = np.flatnonzero(assignment == index)
        split_images = images[sources]
        if settings.patch_size is not None:
            split_images = cut_patches(split_images, settings.patch_size, settings.stride)
            sources = np.repeat(sources, settings.patches_per_image)
        arrays[f"{name}_images"] = np.ascontiguousarray(split_images)
        arrays[f"{name}_labels"] = labels[sources]
        arrays[f"{name}_sources"] = sources
    return arrays


def _prepared(arrays, theme: ThemeSpec, key: str, *, from_cache: bool) -> PreparedData:
    splits = {name: Split(images=arrays[f"{name}_images"], labels=arrays[f"{name}_labels"],
                          sources=arrays[f"{name}_sources"]) for name in SPLIT_NAMES}
    # Skipped files are stored by index, so the names come from today's theme, not from
    # whatever paths the images had when the cache was written.
    skipped = tuple(theme.samples[i].path for i in arrays["skipped_sources"].tolist())
    return PreparedData(**splits, class_names=theme.class_names, skipped=skipped,
                        cache_key=key, from_cache=from_cache,
                        train_sums=pixel_sums(splits["train"].images))


def pixel_sums(images: np.ndarray) -> ChannelSums:
    """Per-channel sums of uint8 (N, C, H, W) images, from histograms of 256 images at a
    time: a whole channel of a large split would be copied to be counted."""
    channels = images.shape[1]
    hist = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), 256):
        chunk = images[start:start + 256]
        for c in range(channels):
            hist[c] += np.bincount(chunk[:, c].reshape(-1), minlength=256)
    levels = np.arange(256, dtype=np.int64)
    return ChannelSums(s1=tuple(int(v) for v in hist @ levels),
                       s2=tuple(int(v) for v in hist @ (levels * levels)),
                       count=images.size // max(channels, 1))
