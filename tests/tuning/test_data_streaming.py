"""The streaming data path against the resident one: shards built in this process and by
Ray tasks hold what the resident arrays hold, trials read the same batches, normalize
alike and train to the same metrics; the mode choice; steps_per_epoch; no theme copy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tuning.test_data import BASE, make_theme, prepare
from tuning.data.mode import GIB, choose_mode
from tuning.data.shards import SHARD_SUFFIX, ShardedData, prepare_shards, shard_root
from tuning.errors import DataError
from tuning.trial.batches import DeviceSplit, StreamSplit, channel_stats, stats_from_sums
from tuning.trial.model import build_model
from tuning.trial.trainable import evaluate_test, train_epoch

PATCHED = replace(BASE, image_size=12, patch_size=8, patch_stride=4,
                  brightness="histogram_equalization")
SPLITS = ("train", "valid", "test")


def shards(theme, settings, root: Path, **kwargs) -> ShardedData:
    return prepare_shards(theme, settings, root=root, **kwargs)


@pytest.fixture
def theme(tmp_path):
    return make_theme(tmp_path / "media", {"a": 30, "b": 25, "c": 20}, size=12)


def read_all(data: ShardedData, name: str) -> np.ndarray:
    split = StreamSplit(getattr(data, name), data, torch.device("cpu"))
    try:
        batches = [images.numpy() for images, _ in split.batches(None, 7)]
    finally:
        split.close()
    return np.concatenate(batches) if batches else np.zeros((0,))


@pytest.mark.parametrize("settings", [BASE, PATCHED], ids=["whole", "patches+equalized"])
def test_shards_hold_exactly_the_resident_arrays(theme, tmp_path, settings, monkeypatch):
    monkeypatch.setattr("tuning.data.shards.SHARD_IMAGES", 16)
    monkeypatch.setattr("tuning.trial.batches.SHARD_IMAGES", 16)
    resident = prepare(theme, settings)
    streamed = shards(theme, settings, tmp_path / "shards")
    assert len(list((tmp_path / "shards").glob(f"*{SHARD_SUFFIX}/images-*.npy"))) == 5
    for name in SPLITS:
        r, s = getattr(resident, name), getattr(streamed, name)
        assert np.array_equal(r.labels, s.labels) and np.array_equal(r.sources, s.sources)
        assert np.array_equal(read_all(streamed, name), r.images)
    mean, std = channel_stats(torch.from_numpy(resident.train.images))
    s_mean, s_std = stats_from_sums(streamed.train_sums)
    assert torch.equal(mean, s_mean) and torch.equal(std, s_std)


def test_shards_are_found_again_and_a_dry_run_writes_nothing(theme, tmp_path):
    root = tmp_path / "shards"
    checked = shards(theme, BASE, root, store=False)
    assert checked.folder is None and not root.exists()
    built = shards(theme, BASE, root)
    again = shards(theme, BASE, root)
    assert not built.from_cache and again.from_cache and again.folder == built.folder
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []


def test_an_unreadable_file_is_refused_before_any_shard_is_kept(theme, tmp_path):
    Path(theme.samples[3].path).write_bytes(b"not an image")
    root = tmp_path / "shards"
    with pytest.raises(DataError, match="cannot be read"):
        shards(theme, BASE, root)
    assert [p.name for p in root.iterdir() if p.name != "by-stat"] == []
    skipping = shards(theme, replace(BASE, skip_unreadable=True), root)
    assert skipping.skipped == (theme.samples[3].path,)
    assert 3 not in np.concatenate([getattr(skipping, n).sources for n in SPLITS])


def test_ray_tasks_build_the_same_shards(theme, tmp_path, ray_local):
    here = shards(theme, PATCHED, tmp_path / "here")
    remote = shards(theme, PATCHED, tmp_path / "remote", use_ray=True)
    for name in SPLITS:
        assert np.array_equal(read_all(here, name), read_all(remote, name))
    assert here.train_sums == remote.train_sums


def _train_and_test(data, seed: int = 3, max_steps=6) -> tuple:
    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = build_model("ResNet18", num_classes=3, in_channels=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    if isinstance(data, ShardedData):
        splits = [StreamSplit(getattr(data, n), data, device) for n in SPLITS]
        mean, std = stats_from_sums(data.train_sums)
    else:
        splits = [DeviceSplit(getattr(data, n), device) for n in SPLITS]
        mean, std = channel_stats(splits[0].images)
    generator = torch.Generator().manual_seed(seed)
    losses = [train_epoch(model, optimizer, splits[0], mean, std, batch_size=8, augments=None,
                          generator=generator, max_steps=max_steps) for _ in range(2)]
    return losses, evaluate_test(model, splits[2], mean, std)


@pytest.mark.slow
def test_both_paths_train_to_the_same_metrics(theme, tmp_path):
    resident = prepare(theme, PATCHED)
    streamed = shards(theme, PATCHED, tmp_path / "shards")
    assert _train_and_test(resident) == _train_and_test(streamed)


def test_steps_per_epoch_caps_the_batches_an_epoch_trains_on(theme, tmp_path):
    streamed = shards(theme, BASE, tmp_path / "shards")
    seen = []
    split = StreamSplit(streamed.train, streamed, torch.device("cpu"))
    original = split.reader.read
    split.reader.read = lambda s, p: seen.append(len(s)) or original(s, p)
    model = build_model("ResNet18", num_classes=3, in_channels=3)
    mean, std = stats_from_sums(streamed.train_sums)
    train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.01), split, mean, std,
                batch_size=4, augments=None, generator=torch.Generator().manual_seed(0),
                max_steps=3)
    assert seen == [4, 4, 4]


def test_resident_cpu_trials_share_the_arrays_instead_of_copying_them(theme):
    resident = prepare(theme, BASE)
    images = resident.train.images.copy()
    images.setflags(write=False)   # as the object store hands them over
    split = DeviceSplit(replace(resident.train, images=images), torch.device("cpu"))
    assert split.images.data_ptr() == images.ctypes.data


def test_auto_mode_keeps_a_theme_resident_only_while_it_fits():
    small = choose_mode("auto", items=1000, item_bytes=3 * 224 * 224, gpu_per_trial=0,
                        memory_bytes=24 * GIB)
    large = choose_mode("auto", items=40_000, item_bytes=3 * 224 * 224, gpu_per_trial=0,
                        memory_bytes=24 * GIB)
    gpu = choose_mode("auto", items=8_000, item_bytes=3 * 224 * 224, gpu_per_trial=0.25,
                      memory_bytes=256 * GIB, gpu_bytes=16 * GIB)
    forced = choose_mode("streaming", items=10, item_bytes=10, gpu_per_trial=0)
    assert (small.mode, large.mode, gpu.mode, forced.mode) == (
        "resident", "streaming", "streaming", "streaming")
    assert "GPU" in gpu.reason and "data.mode" in large.reason


def test_the_shard_root_is_on_the_shared_storage_unless_that_is_a_bucket(tmp_path):
    assert shard_root(str(tmp_path / "results"), "cache") == (
        tmp_path / "results" / "themetune_cache")
    assert shard_root("s3://bucket/x", str(tmp_path / "c")) == tmp_path / "c"


def test_a_node_without_the_media_root_stops_the_build_with_the_fix(theme, ray_local):
    import tuning.data.shards as shards_module

    with pytest.raises(DataError, match="is not mounted on node .*every node"):
        shards_module._decode_with_ray([[theme.samples[0].path]], [None], BASE,
                                       lambda line: None, "/nonexistent/media")


def test_evaluation_batches_hold_a_fixed_number_of_pixels():
    from tuning.trial.trainable import eval_batch_size

    assert [eval_batch_size(side) for side in (16, 64, 224, 1024)] == [512, 512, 41, 2]
