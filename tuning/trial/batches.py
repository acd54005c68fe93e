"""Where a trial's batches come from, in either data path, and the normalization both
paths compute alike.

resident   DeviceSplit: the split's uint8 arrays as one tensor on the trial's device. On
           a CPU the tensor is the object store's read-only shared memory itself (every
           trial on the node maps the same pages), since a batch is always gathered into
           a new tensor before anything writes to it; on a GPU the transfer is the copy.
streaming  StreamSplit: each batch read from the shard files (tuning.data.shards) by a
           background thread one or two batches ahead of the step that needs it, so a
           trial holds a few batches, never the theme.

Both yield the same uint8 batches in the same order for the same permutation, and both
normalize with stats_from_sums over exact integer pixel sums, so a seed gives the same
metrics on either path.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from tuning.data import ChannelSums, Split
from tuning.data.shards import SHARD_IMAGES, ShardedData, ShardSplit, shard_file

# Batches read ahead of the one in use: enough to hide a read behind a step, and at most
# this many batches of host memory.
PREFETCH = 2

Batch = tuple[torch.Tensor, torch.Tensor]


def channel_sums(images: torch.Tensor) -> ChannelSums:
    """Per-channel pixel sums of uint8 images, from a 256-bin histogram per channel: a
    float copy of the split would be 4x its memory (bench.data: 0.9 s against 0.07 s
    for 14,000 32 px RGB images on one CPU thread)."""
    levels = torch.arange(256, dtype=torch.int64, device=images.device)
    s1, s2 = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256)
        s1.append(int((hist * levels).sum()))
        s2.append(int((hist * levels * levels).sum()))
    count = images.numel() // max(images.shape[1], 1)
    return ChannelSums(s1=tuple(s1), s2=tuple(s2), count=count)


def stats_from_sums(sums: ChannelSums, device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample std per channel of values in [0, 1], shaped (1, C, 1, 1).

    In exact integer arithmetic until one rounding each, so the same pixels give the
    same float32 values whatever path summed them."""
    n = max(sums.count, 1)
    means, stds = [], []
    for s1, s2 in zip(sums.s1, sums.s2):
        means.append(s1 / (255 * n))
        stds.append(math.sqrt(max((n * s2 - s1 * s1) / (255 * 255 * n * max(n - 1, 1)), 0.0)))
    shape = (1, len(means), 1, 1)
    mean = torch.tensor(means, dtype=torch.float64).to(torch.float32).reshape(shape)
    std = torch.tensor(stds, dtype=torch.float64).to(torch.float32).reshape(shape)
    return mean.to(device), std.clamp_min(1e-3).to(device)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return stats_from_sums(channel_sums(images), images.device)


def _spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


class DeviceSplit:
    """One split as uint8 on the device, normalized per batch (4x less memory than float)."""

    def __init__(self, split: Split, device: torch.device):
        self.images = _on_device(split.images, device)
        self.labels = _on_device(split.labels, device)
        n_sources = len(np.unique(split.sources)) if len(split.sources) else 0
        self.patches_per_image = len(split.sources) // n_sources if n_sources else 1

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def side(self) -> int:
        return int(self.images.shape[-1])

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Iterator[Batch]:
        """(images, labels) per batch: of `order`'s items, or in split order when None."""
        if order is None:
            for start, stop in _spans(len(self), batch_size):
                yield self.images[start:stop], self.labels[start:stop]
            return
        order = order.to(self.images.device)
        for start, stop in _spans(len(order), batch_size):
            idx = order[start:stop]
            yield self.images[idx], self.labels[idx]


def _on_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # Arrays from the object store are read-only; nothing writes to them here (every batch
    # is gathered or converted into a new tensor first), so no copy is made on a CPU,
    # and on a GPU the transfer is the copy.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


class ShardReader:
    """Reads items (source image, patch number) from shard files with positioned reads:
    the pages stay in the OS cache, shared by every trial on the node, and out of the
    trial's own memory."""

    def __init__(self, data: ShardedData):
        if data.folder is None:
            raise ValueError("these shards were only checked (dry run), not written")
        self.folder = data.folder
        self.shape = data.image_shape
        self.image_bytes = int(np.prod(self.shape))
        self.patch = data.patch_size
        self.stride = data.stride or self.shape[-1]
        self.per_side = ((self.shape[-1] - self.patch) // self.stride + 1) if self.patch else 1
        self._files: dict[int, tuple[int, int]] = {}

    def read(self, sources: np.ndarray, patches: np.ndarray) -> np.ndarray:
        side = self.patch or self.shape[-1]
        out = np.empty((len(sources), self.shape[0], side, side), dtype=np.uint8)
        scratch = np.empty(self.shape, dtype=np.uint8) if self.patch else None
        for i, (source, patch) in enumerate(zip(sources.tolist(), patches.tolist())):
            target = out[i] if scratch is None else scratch
            self._read_image(source, target)
            if scratch is not None:
                row, col = divmod(patch, self.per_side)
                top, left = row * self.stride, col * self.stride
                out[i] = scratch[:, top:top + side, left:left + side]
        return out

    def _read_image(self, source: int, target: np.ndarray) -> None:
        fd, offset = self._open(source // SHARD_IMAGES)
        position = offset + (source % SHARD_IMAGES) * self.image_bytes
        got = os.preadv(fd, [target.reshape(-1)], position)
        if got != self.image_bytes:
            raise OSError(f"shard {shard_file(self.folder, source // SHARD_IMAGES)} is "
                          f"truncated (image {source}); delete its folder to rebuild it")

    def _open(self, number: int) -> tuple[int, int]:
        if number not in self._files:
            path = shard_file(self.folder, number)
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version[0] == 1
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = header(f)
                if dtype != np.uint8 or tuple(shape[1:]) != tuple(self.shape):
                    raise OSError(f"shard {path} holds {dtype} {shape}, not uint8 "
                                  f"(n, {', '.join(map(str, self.shape))})")
                offset = f.tell()
            self._files[number] = (os.open(path, os.O_RDONLY), offset)
        return self._files[number]

    def close(self) -> None:
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self):
        self.close()


class StreamSplit:
    """One split read from the shards batch by batch, a background thread ahead."""

    def __init__(self, split: ShardSplit, data: ShardedData, device: torch.device):
        self.split = split
        self.device = device
        self.labels = torch.from_numpy(split.labels).to(device)
        n_sources = len(np.unique(split.sources)) if len(split.sources) else 0
        self.patches_per_image = len(split.sources) // n_sources if n_sources else 1
        self.reader = ShardReader(data)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def side(self) -> int:
        return self.reader.patch or self.reader.shape[-1]

    def _load(self, items: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        images = torch.from_numpy(self.reader.read(self.split.sources[items],
                                                   self.split.patches[items]))
        if self.device.type == "cuda":
            images = images.pin_memory()
        return images, items

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Iterator[Batch]:
        positions = order.cpu().numpy() if order is not None else np.arange(len(self))
        spans = _spans(len(positions), batch_size)
        with ThreadPoolExecutor(1, thread_name_prefix="themetune-prefetch") as pool:
            ahead = deque(pool.submit(self._load, positions[a:b]) for a, b in spans[:PREFETCH])
            following = iter(spans[PREFETCH:])
            while ahead:
                images, items = ahead.popleft().result()
                span = next(following, None)
                if span is not None:
                    ahead.append(pool.submit(self._load, positions[span[0]:span[1]]))
                labels = self.labels[torch.from_numpy(items).to(self.device)]
                yield images.to(self.device, non_blocking=True), labels

    def close(self) -> None:
        self.reader.close()
