"""The streaming data path: a theme preprocessed into shard files that trials read batch
by batch, so that no process ever holds the whole decoded theme.

Layout under the shard root (`<ray.storage_path>/themetune_cache`, which every node of a
cluster already mounts, or `infra.cache_dir` when the storage is a bucket):

    <key>.shards/images-00000.npy   uint8 (n, C, S, S): sources 0..SHARD_IMAGES-1 in
                 images-00001.npy   theme order, unreadable ones left zero
                 index.npz          per source: label, readable; per source and patch:
                                    each channel's sum and sum of squares (int64)
    by-stat/<stat key>              the content key, as in the resident cache

The key is the resident cache's (tuning.data.keys), so a change to any image, label or
setting builds new shards. Shards are decoded by Ray tasks spread over the cluster when
Ray is up (each node reads the files it decodes), else by threads in this process; a
dry run decodes to check every file and keeps nothing. The folder appears complete or
not at all (built under a temporary name, then renamed).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuning import storage
from tuning.data import keys
from tuning.data.cache import load_arrays, new_build_dir, publish
from tuning.data.decode import DECODE_WORKERS, Progress, decode_chunk
from tuning.data.settings import PreprocessSettings
from tuning.data.split import SPLIT_NAMES, assign_readable, check_class_sizes, theme_labels
from tuning.data.theme import ThemeSpec
from tuning.data.trial_data import ChannelSums, TrialData
from tuning.errors import MediaRootMissingError

# Sources per shard: 256 RGB images at 224 px are 38 MB, small enough for one task's
# memory and large enough that 32k images make 125 files, not thousands.
SHARD_IMAGES = 256
SHARD_SUFFIX = ".shards"
INDEX_FILE = "index.npz"
CACHE_FOLDER = "themetune_cache"


@dataclass(frozen=True)
class ShardSplit:
    labels: np.ndarray    # int64 (N,)
    sources: np.ndarray   # int64 (N,): index into theme.samples, ascending
    patches: np.ndarray   # int64 (N,): patch number within its source, row-major

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ShardedData(TrialData[ShardSplit]):
    folder: str | None           # absolute; None after a dry run that built nothing
    image_shape: tuple[int, int, int]   # (C, S, S) of each stored source image
    patch_size: int | None
    stride: int | None
    mode = "streaming"


def shard_root(storage_path: str, cache_dir: str) -> Path:
    if storage.is_remote_storage(storage_path):
        return Path(cache_dir).resolve()
    return storage.local_storage_path(storage_path).resolve() / CACHE_FOLDER


def prepare_shards(theme: ThemeSpec, settings: PreprocessSettings, *, root: Path,
                   progress: Progress | None = None, store: bool = True,
                   use_ray: bool = False) -> ShardedData:
    """The theme as shards under `root`, built if missing. `store=False` (a dry run)
    decodes every image to check it and writes nothing."""
    report = progress or (lambda message: None)
    labels = theme_labels(theme)
    paths = [s.path for s in theme.samples]
    stats = keys.stat_inside_root(paths, theme.media_root)
    key = keys.find_key(root, paths, stats, labels, settings)
    folder = root / f"{key.content}{SHARD_SUFFIX}"
    index = load_arrays(folder / INDEX_FILE)
    if index is not None:
        if not key.linked and store:
            keys.link(root, key)
        report(f"preprocessed shards of theme '{theme.name}' found at {folder}")
        return _sharded(index, theme, settings, key.content, folder, from_cache=True)
    check_class_sizes(labels, np.ones(len(labels), dtype=bool), settings, theme.class_names)
    build = new_build_dir(root, key.content) if store else None
    try:
        reasons, s1, s2 = _decode_to_shards(paths, settings, build, report, use_ray=use_ray,
                                            media_root=theme.media_root)
        index = _index(theme, labels, reasons, s1, s2, settings)
        if build is None:
            return _sharded(index, theme, settings, key.content, None, from_cache=False)
        np.savez(build / INDEX_FILE, **index)
        publish(build, folder, INDEX_FILE)
        keys.link(root, key)
    finally:
        if build is not None:
            shutil.rmtree(build, ignore_errors=True)
    return _sharded(index, theme, settings, key.content, folder, from_cache=False)


def _index(theme, labels, reasons, s1, s2, settings) -> dict[str, np.ndarray]:
    _, assignment = assign_readable(theme, labels, reasons, settings)
    return {"labels": labels, "assignment": assignment, "s1": s1, "s2": s2}


def _sharded(index, theme: ThemeSpec, settings: PreprocessSettings, key: str,
             folder: Path | None, *, from_cache: bool) -> ShardedData:
    per_image = settings.patches_per_image
    splits = {}
    for number, name in enumerate(SPLIT_NAMES):
        sources = np.flatnonzero(index["assignment"] == number)
        # Patches of one image are consecutive, in the order cut_patches gives them, so
        # a split lists exactly what the resident arrays hold, item for item.
        items = np.repeat(sources, per_image)
        patches = np.tile(np.arange(per_image, dtype=np.int64), len(sources))
        splits[name] = ShardSplit(labels=index["labels"][items], sources=items, patches=patches)
    train = splits["train"]
    s1 = index["s1"][train.sources, train.patches].sum(axis=0)
    s2 = index["s2"][train.sources, train.patches].sum(axis=0)
    side = settings.input_size
    sums = ChannelSums(s1=tuple(int(v) for v in s1), s2=tuple(int(v) for v in s2),
                       count=len(train) * side * side)
    skipped = tuple(theme.samples[i].path for i in np.flatnonzero(index["assignment"] < 0))
    return ShardedData(**splits, class_names=theme.class_names, skipped=skipped,
                       cache_key=key, from_cache=from_cache,
                       folder=str(folder) if folder is not None else None,
                       image_shape=(settings.channels, settings.image_size, settings.image_size),
                       patch_size=settings.patch_size, stride=settings.stride, train_sums=sums)


# --- decoding ---------------------------------------------------------------------------

def shard_file(folder: str | Path, number: int) -> Path:
    return Path(folder) / f"images-{number:05d}.npy"


def decode_shard(paths: list[str], settings: PreprocessSettings, out: str | None,
                 media_root: str | None = None):
    """Decode one shard's images; write them to `out` (when given) and return, per image,
    the reason it could not be read (or None) and its per-patch channel sums."""
    if media_root is not None and not os.path.isdir(media_root):
        # Otherwise every file of the shard would read as missing, and with
        # skip_unreadable which images a study trains on would depend on the node.
        raise MediaRootMissingError(
            f"media root {media_root} is not mounted on node {os.uname().nodename}: the "
            f"nodes decode the theme's images themselves in streaming mode.",
            fix="mount the media root at the same path on every node, or set "
                "data.mode: resident.")
    images, reasons = decode_chunk(paths, settings)
    if out is not None:
        tmp = f"{out}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, images)
        os.replace(tmp, out)
    s1, s2 = patch_sums(images, settings)
    return reasons, s1, s2


def patch_sums(images: np.ndarray, settings: PreprocessSettings):
    """(n, patches, C) int64 sums and sums of squares of each patch (or whole image)."""
    n, channels = images.shape[:2]
    size, stride = settings.input_size, settings.stride or settings.image_size
    per_side = (settings.image_size - size) // stride + 1
    s1 = np.zeros((n, per_side * per_side, channels), dtype=np.int64)
    s2 = np.zeros_like(s1)
    for i in range(n):
        wide = images[i].astype(np.int64)
        for p in range(per_side * per_side):
            row, col = divmod(p, per_side)
            window = wide[:, row * stride:row * stride + size, col * stride:col * stride + size]
            s1[i, p] = window.sum(axis=(1, 2))
            s2[i, p] = (window * window).sum(axis=(1, 2))
    return s1, s2


def _decode_to_shards(paths, settings, build: Path | None, report: Progress, *, use_ray: bool,
                      media_root: str):
    chunks = [paths[i:i + SHARD_IMAGES] for i in range(0, len(paths), SHARD_IMAGES)]
    outs = [str(shard_file(build, k)) if build is not None else None
            for k in range(len(chunks))]
    if use_ray:
        results = _decode_with_ray(chunks, outs, settings, report, media_root)
    else:
        results = _decode_here(chunks, outs, settings, report)
    reasons = [why for chunk_reasons, _, _ in results for why in chunk_reasons]
    s1 = np.concatenate([r[1] for r in results])
    s2 = np.concatenate([r[2] for r in results])
    return reasons, s1, s2


def _decode_here(chunks, outs, settings, report: Progress) -> list:
    total, done, results = sum(map(len, chunks)), 0, []
    report(f"decoding {total} images into {len(chunks)} shards in this process")
    with ThreadPoolExecutor(DECODE_WORKERS) as pool:
        for chunk, result in zip(chunks, pool.map(decode_shard, chunks,
                                                  [settings] * len(chunks), outs)):
            results.append(result)
            done += len(chunk)
            _progress(report, done, total, len(chunks), len(results))
    return results


def _decode_with_ray(chunks, outs, settings, report: Progress, media_root: str) -> list:
    """One task per shard, spread over the nodes; progress as they finish."""
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=2)(decode_shard)
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    total = sum(map(len, chunks))
    report(f"decoding {total} images into {len(chunks)} shards with Ray tasks on "
           f"{nodes} node{'s' * (nodes > 1)}")
    pending = {remote.remote(chunk, settings, out, media_root): k for k, (chunk, out)
               in enumerate(zip(chunks, outs))}
    results: list = [None] * len(chunks)
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            k = pending.pop(ref)
            try:
                results[k] = ray.get(ref)
            except RayTaskError as exc:
                if not isinstance(exc.cause, MediaRootMissingError):
                    raise
                for other in pending:
                    ray.cancel(other)
                raise exc.cause from None
            done += len(chunks[k])
            _progress(report, done, total, len(chunks), len(chunks) - len(pending))
    return results


def _progress(report: Progress, done: int, total: int, shards: int, finished: int) -> None:
    step = max(1, shards // 10)
    if finished % step == 0 or finished == shards:
        report(f"decoded {done}/{total} images ({100 * done // total}%)")
