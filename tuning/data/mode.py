"""Which data path a study takes: resident (the decoded theme in memory) or streaming
(batches read from shards), by `data.mode` or, on `auto`, by the theme's decoded size.

Resident holds the theme twice on the driver's node while it starts (the driver's
arrays and the object store's copy; Ray's object store defaults to 30 % of memory), and
once more per GPU trial on its GPU. So auto keeps a theme resident only while its
decoded arrays fit RESIDENT_SHARE of this node's memory, and, for GPU trials, a
quarter of one trial's share of a GPU this node has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RESIDENT_SHARE = 0.2
GPU_SHARE = 0.25
GIB = 1024 ** 3


@dataclass(frozen=True)
class DataMode:
    mode: str        # "resident" or "streaming"
    reason: str      # one line for the start of the study

    @property
    def streaming(self) -> bool:
        return self.mode == "streaming"


def choose_mode(requested: str, *, items: int, item_bytes: int, gpu_per_trial: float,
                memory_bytes: int | None = None, gpu_bytes: int | None = None) -> DataMode:
    theme_bytes = items * item_bytes
    size = f"{items} images x {item_bytes / 1024:.0f} KiB = {theme_bytes / GIB:.2f} GiB decoded"
    if requested != "auto":
        return DataMode(requested, f"data.mode: {requested}; {size}")
    memory = memory_bytes if memory_bytes is not None else node_memory_bytes()
    budget, where = RESIDENT_SHARE * memory, (f"{RESIDENT_SHARE:.0%} of this node's "
                                              f"{memory / GIB:.1f} GiB")
    if gpu_per_trial > 0:
        gpu = gpu_bytes if gpu_bytes is not None else _gpu_bytes()
        if gpu is not None and GPU_SHARE * gpu_per_trial * gpu < budget:
            budget = GPU_SHARE * gpu_per_trial * gpu
            where = f"{GPU_SHARE:.0%} of a trial's {gpu_per_trial:g} of a {gpu / GIB:.0f} GiB GPU"
    mode = "resident" if theme_bytes <= budget else "streaming"
    relation = "<=" if mode == "resident" else ">"
    return DataMode(mode, f"auto; {size} {relation} {budget / GIB:.2f} GiB ({where}); "
                          f"set data.mode to choose")


def node_memory_bytes() -> int:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:   # a container's limit, where there is one
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        return min(physical, int(limit)) if limit.isdigit() else physical
    except OSError:
        return physical


def _gpu_bytes() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None   # the driver has none: the CPU budget is all it can judge
    return torch.cuda.get_device_properties(0).total_memory
