"""What either data path hands to a trial: the resident arrays (tuning.data.resident) or
the shard index (tuning.data.shards) share these fields, so a trial reads them one way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

SplitT = TypeVar("SplitT")


@dataclass(frozen=True)
class ChannelSums:
    """Exact integer sums over a split's pixels, per channel: the normalization either
    data path computes from (tuning.trial.batches.stats_from_sums)."""
    s1: tuple[int, ...]
    s2: tuple[int, ...]
    count: int


@dataclass(frozen=True)
class TrialData(Generic[SplitT]):
    train: SplitT
    valid: SplitT
    test: SplitT
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]     # unreadable paths that were skipped (only with skip_unreadable)
    cache_key: str
    from_cache: bool
    # Summed once on the driver rather than in each trial, which would read every page
    # of the split (7-9 s per trial start for 32k images at 224 px in bench.scale).
    train_sums: ChannelSums
    mode: ClassVar[str]          # "resident" or "streaming", as tuning.data.mode names them
