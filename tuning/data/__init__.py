"""Read a theme's images once per study, preprocess them, and cache the arrays on disk.

Trials never decode images: the driver calls `prepare_data` once and `ray.put`s the
result. The cache lives under `cache_dir/<key>/data.npz`, where the key is a sha256 over
the content of every image, its label, the preprocessing settings and FORMAT_VERSION,
so a cached entry can only be reused for identical inputs.

Hashing every file on each launch costs a full read of the theme, so a second, cheaper
key over (path, inode, size, mtime, ctime, label) maps to the content key in
`cache_dir/by-stat/`. A warm start therefore only stats the files; any change to a file
changes its stat key and falls back to hashing, which still finds the content entry when
the bytes did not change (e.g. after a `touch` or a copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from theme_classifier.preprocess import (HISTOGRAM_EQUALIZATION, cut_patches, decode,
                                         equalize)
from tuning.errors import DataError
from tuning.data.theme import ThemeSpec

# Bump whenever decoding or preprocessing changes what the arrays contain.
FORMAT_VERSION = 1

SPLIT_NAMES = ("train", "valid", "test")
_MAX_LISTED = 5
# Themes shorter than this decode in a blink: reporting progress would be noise.
_PROGRESS_MIN_IMAGES = 200
# Images per task of the decode pool; also the granularity of progress reports.
_CHUNK = 100
_CHUNK_PIXELS = 4_000_000
# Pillow releases the GIL while it inflates, decodes and resizes, so threads overlap that
# C work for photo-sized files: measured on 2 shared cores, 1,000 512x384 files took
# 2.0 s (JPEG) and 3.7 s (PNG) with 2 threads against 3.1 s and 7.3 s in one. Small files
# spend most of their time in Python (open, mode checks), where threads only take turns:
# 2,000 PNGs of 8-32 px took 1.2 s with 2 threads against 0.8 s in one.
_THREADED_MIN_MEAN_BYTES = 64 * 1024
_DECODE_WORKERS = min(8, os.cpu_count() or 1)

Progress = Callable[[str], None]


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


@dataclass(frozen=True)
class Split:
    images: np.ndarray   # uint8, (N, C, H, W), C-contiguous
    labels: np.ndarray   # int64, (N,)
    sources: np.ndarray  # int64, (N,): index into theme.samples; patches of one image share it

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ChannelSums:
    """Exact integer sums over a split's pixels, per channel: the normalization either
    data path computes from (tuning.trial.batches.stats_from_sums)."""
    s1: tuple[int, ...]
    s2: tuple[int, ...]
    count: int


@dataclass(frozen=True)
class PreparedData:
    train: Split
    valid: Split
    test: Split
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]     # unreadable paths that were skipped (only with skip_unreadable)
    cache_key: str
    from_cache: bool
    # Summed once here rather than in each trial, which would read every page of the
    # split (7-9 s per trial start for 32k images at 224 px in bench.scale).
    train_sums: ChannelSums
    mode = "resident"   # the streaming path's counterpart: tuning.data.shards.ShardedData


def prepare_data(theme: ThemeSpec, settings: PreprocessSettings, *, cache_dir: Path,
                 progress: Progress | None = None, store: bool = True) -> PreparedData:
    """Decode, preprocess and split the theme's images, or load them from the cache.
    `store=False` (a dry run) reads the cache but writes nothing."""
    report = progress or (lambda message: None)
    if not theme.samples:
        raise DataError(f"theme '{theme.name}' (id {theme.id}) has no images.",
                        fix="add labelled images to the theme.")
    labels = np.array([s.label for s in theme.samples], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= theme.num_classes:
        raise ValueError(f"sample labels must index class_names (0..{theme.num_classes - 1}); "
                         f"got {labels.min()}..{labels.max()}")
    paths = [s.path for s in theme.samples]
    stats = _stat_inside_root(paths, theme.media_root)

    cache_dir = Path(cache_dir)
    stat_key = _stat_key(paths, stats, labels, settings)
    known_key = _read_text(cache_dir / "by-stat" / stat_key)
    key = known_key or _content_key(paths, labels, settings)
    cached = _load(cache_dir / key / "data.npz")
    if cached is not None:
        if known_key is None and store:
            _write_atomic_text(cache_dir / "by-stat" / stat_key, key)
        report(f"preprocessed images of theme '{theme.name}' loaded from cache {cache_dir / key}")
        return _prepared(cached, theme, key, from_cache=True)

    # Fail on too small classes before spending the decode; checked again after skipping.
    _check_class_sizes(labels, np.ones(len(labels), dtype=bool), settings, theme.class_names)
    sizes = [st.st_size for st in stats if st is not None]
    threaded = bool(sizes) and sum(sizes) / len(sizes) >= _THREADED_MIN_MEAN_BYTES
    images, reasons = _decode_all(paths, settings, report, threaded=threaded)
    ok, assignment = assign_readable(theme, labels, reasons, settings)
    arrays = _build_splits(images, labels, assignment, settings)
    arrays["skipped_sources"] = np.flatnonzero(~ok).astype(np.int64)
    if store:
        _store(cache_dir, key, arrays)
        _write_atomic_text(cache_dir / "by-stat" / stat_key, key)
    return _prepared(arrays, theme, key, from_cache=False)


# --- paths and keys ---------------------------------------------------------------------

def _stat_inside_root(paths: list[str], media_root: str) -> list[os.stat_result | None]:
    """Stat every file (None if missing) and refuse any whose real path leaves media_root."""
    root = os.path.realpath(media_root)
    prefix = root.rstrip(os.sep) + os.sep

    def inside(real: str) -> bool:
        return real == root or real.startswith(prefix)

    # realpath on every file costs one lstat per path component (0.7 s for 20k files);
    # resolving each directory once and lstat-ing only the file itself costs a tenth.
    dir_inside: dict[str, bool] = {}
    stats: list[os.stat_result | None] = []
    outside: list[str] = []
    for path in paths:
        directory, _, name = path.rpartition(os.sep)
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if (st is not None and stat.S_ISLNK(st.st_mode)) or name in ("", ".", ".."):
            ok = inside(os.path.realpath(path))
            try:
                st = os.stat(path)
            except OSError:
                st = None
        else:
            if directory not in dir_inside:
                dir_inside[directory] = inside(os.path.realpath(directory or os.curdir))
            ok = dir_inside[directory]
        if not ok:
            outside.append(path)
        stats.append(st)
    if outside:
        raise DataError(
            f"refused: images must lie inside the media root {root} (symlinks resolved); "
            f"{len(outside)} outside: {_listing(outside)}.",
            fix="move the images under the media root or correct their paths in the database.")
    return stats


def _settings_blob(settings: PreprocessSettings) -> bytes:
    return json.dumps({"format": FORMAT_VERSION, **asdict(settings)}, sort_keys=True).encode()


def _stat_key(paths, stats, labels, settings) -> str:
    h = hashlib.sha256(b"stat\0" + _settings_blob(settings))
    for path, st, label in zip(paths, stats, labels.tolist()):
        if st is None:
            h.update(f"{path}\0missing\0{label}\n".encode())
        else:
            h.update(f"{path}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
                     f"\0{label}\n".encode())
    return h.hexdigest()


def _content_key(paths, labels, settings) -> str:
    h = hashlib.sha256(b"content\0" + _settings_blob(settings))
    for path, label in zip(paths, labels.tolist()):
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            digest = "unreadable"
        h.update(f"{digest}\0{label}\n".encode())
    return h.hexdigest()


# --- decoding ---------------------------------------------------------------------------

def _decode_all(paths: list[str], settings: PreprocessSettings, report: Progress, *,
                threaded: bool):
    """Decode, resize (and equalize) every image into one (N, C, S, S) array.

    Returns the array and, per path, None or the reason it could not be read."""
    n, s = len(paths), settings.image_size
    images = np.zeros((n, settings.channels, s, s), dtype=np.uint8)
    reasons: list[str | None] = [None] * n
    # Chunks of at most _CHUNK_PIXELS values bound the int64 temporaries of equalize.
    per_chunk = max(1, min(_CHUNK, _CHUNK_PIXELS // (settings.channels * s * s)))
    chunks = [range(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)]
    verbose = n >= _PROGRESS_MIN_IMAGES
    workers = min(_DECODE_WORKERS, len(chunks)) if threaded else 1
    if verbose:
        report(f"decoding {n} images ({workers} worker{'s' * (workers > 1)})")
    results = _map_chunks(workers, [[paths[i] for i in c] for c in chunks], settings)
    next_report = n // 10
    for chunk, (array, chunk_reasons) in zip(chunks, results):
        images[chunk.start:chunk.stop] = array
        reasons[chunk.start:chunk.stop] = chunk_reasons
        if verbose and (chunk.stop >= next_report):
            report(f"decoded {chunk.stop}/{n} images ({100 * chunk.stop // n}%)")
            next_report = chunk.stop + n // 10
    return images, reasons


def _map_chunks(workers: int, chunks: list[list[str]], settings: PreprocessSettings):
    if workers <= 1:
        yield from (_decode_chunk(c, settings) for c in chunks)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(_decode_chunk, chunks, [settings] * len(chunks))


def _decode_chunk(paths: list[str], settings: PreprocessSettings):
    s = settings.image_size
    out = np.zeros((len(paths), settings.channels, s, s), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            out[i] = decode(path, size=settings.image_size, channels=settings.channels)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            # PIL signals a broken or non-image file with any of these; the caller lists
            # them all at once instead of failing on the first.
            reasons[i] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    if settings.brightness == HISTOGRAM_EQUALIZATION:
        out = equalize(out)
    return out, reasons


# --- splitting --------------------------------------------------------------------------

def assign_readable(theme: ThemeSpec, labels: np.ndarray, reasons: list[str | None],
                    settings: PreprocessSettings) -> tuple[np.ndarray, np.ndarray]:
    """The split of every readable source image (-1: skipped), or DataError when an
    image cannot be read and skipping was not asked for."""
    unreadable = [(sample.path, why) for sample, why in zip(theme.samples, reasons)
                  if why is not None]
    if unreadable and not settings.skip_unreadable:
        listed = _listing([f"{path} ({why})" for path, why in unreadable], sep="; ")
        raise DataError(
            f"every image of theme '{theme.name}' must be a readable image file; "
            f"{len(unreadable)} cannot be read: {listed}.",
            fix="remove it or set data.skip_unreadable: true.")
    ok = np.array([why is None for why in reasons])
    return ok, _assign_splits(labels, ok, settings, theme.class_names)


def _check_class_sizes(labels: np.ndarray, ok: np.ndarray, settings: PreprocessSettings,
                       class_names: tuple[str, ...]) -> None:
    needed = sum(1 for f in settings.split if f > 0)
    counts = np.bincount(labels[ok], minlength=len(class_names))
    short = [f"'{class_names[c]}' has {counts[c]}" for c in range(len(class_names))
             if counts[c] < needed]
    if short:
        ratio = "/".join(f"{f:g}" for f in settings.split)
        raise DataError(
            f"each class needs at least {needed} readable images so that every split with a "
            f"nonzero fraction (train/valid/test = {ratio}) gets one; {', '.join(short)}.",
            key="data.split_ratio",
            fix="add images to these classes or change data.split_ratio.")


def _assign_splits(labels: np.ndarray, ok: np.ndarray, settings: PreprocessSettings,
                   class_names: tuple[str, ...]) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test; -1 skipped) per source image, stratified by class."""
    _check_class_sizes(labels, ok, settings, class_names)
    fractions = np.array(settings.split, dtype=np.float64)
    assignment = np.full(len(labels), -1, dtype=np.int64)
    for c in range(len(class_names)):
        members = np.flatnonzero(ok & (labels == c))
        # One generator per class: adding a class leaves the others' splits unchanged.
        rng = np.random.default_rng([settings.seed, c])
        members = members[rng.permutation(len(members))]
        sizes = _split_sizes(len(members), fractions)
        assignment[members] = np.repeat(np.arange(3), sizes)
    return assignment


def _split_sizes(n: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding, then one image moved into each nonzero split left empty."""
    exact = n * fractions
    sizes = np.floor(exact).astype(np.int64)
    remainders = np.where(fractions > 0, exact - sizes, -1.0)  # a zero fraction gets nothing
    for i in np.argsort(-remainders, kind="stable")[: n - sizes.sum()]:
        sizes[i] += 1
    for i in np.flatnonzero((fractions > 0) & (sizes == 0)):
        sizes[np.argmax(sizes)] -= 1
        sizes[i] += 1
    return sizes


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


# --- cache ------------------------------------------------------------------------------

def _store(cache_dir: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write cache_dir/key/data.npz so that the directory appears complete or not at all."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=cache_dir))
    try:
        # Uncompressed: loading 20k images must stay well under a second.
        np.savez(tmp / "data.npz", **arrays)
        try:
            os.rename(tmp, cache_dir / key)
        except OSError:
            # Another process stored the same key first; its arrays equal ours.
            if not (cache_dir / key / "data.npz").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        # A damaged entry (disk fault, manual edit) is only a cache miss: rebuild it.
        shutil.rmtree(path.parent, ignore_errors=True)
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _write_atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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


def _listing(items: list[str], sep: str = ", ") -> str:
    more = f"{sep}and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return sep.join(items[:_MAX_LISTED]) + more
