"""A tiny slice of bench.scale, without a cluster: the generated theme, the fresh-process
preparations that report their own peak memory, and the trial probe on both paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import scale


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scale-images")
    scale.generate(folder, 30)
    return folder


def test_generated_theme_is_balanced_jpegs(images):
    from PIL import Image

    theme = scale.theme_of(images, 30)
    assert len(theme.samples) == 30
    assert set(theme.class_counts().values()) == {3}
    with Image.open(theme.samples[7].path) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (224, 224), "RGB")
    assert scale.generate(images, 30) == 0.0   # reused, not written again


@pytest.mark.slow
def test_children_report_their_own_peak_memory(images, tmp_path):
    shards = scale.run_child({"kind": "shards", "images": str(images), "count": 30,
                              "root": str(tmp_path / "shards")})
    resident = scale.run_child({"kind": "resident", "images": str(images), "count": 30,
                                "root": str(tmp_path / "cache")})
    for result in (shards, resident):
        assert result["train"] == shards["train"] > 0 and result["seconds"] > 0
        assert result["VmHWM"] >= result["VmRSS"] > 0


@pytest.mark.slow
def test_probe_trains_from_either_path(images, tmp_path):
    from tuning.data import prepare_data
    from tuning.data.shards import prepare_shards

    # 32 px: the probe is the same code at any size, and 224 px steps take seconds.
    theme, settings = scale.theme_of(images, 30), scale.settings(32)
    paths = [prepare_data(theme, settings, cache_dir=tmp_path / "cache"),
             prepare_shards(theme, settings, root=tmp_path / "shards")]
    for data in paths:
        result = scale.trial_probe(data, steps=1, batch=2)
        assert result["mode"] == data.mode
        assert result["img_s"] > 0 and result["VmHWM"] > 0 and "RssShmem" in result


def test_summary_reads_the_targets():
    pre = [{"size": s, "nodes": n, "seconds": s / 100 / (1.8 if n == 2 else 1),
            "steady_img_s": 100.0 * (1.8 if n == 2 else 1), "first_shard_s": 1.0,
            "VmHWM": 200.0} for s in (10, 40) for n in (1, 2)]
    trials = [{"size": s, "mode": m, "VmHWM": 500.0, "img_cpu_s": 4.0 if m == "resident"
               else 3.9} for s in (10, 40) for m in ("resident", "streaming")]
    summary = scale.summarize([10, 40], pre, {10: {}, 40: {}}, trials)
    assert summary["rss_growth"] == 1.0 and summary["driver_rss_growth"] == 1.0
    assert summary["nodes_speedup"] == pytest.approx(1.8)
    assert summary["streaming_vs_resident"] == pytest.approx(0.975)
    assert all(summary["met_each"].values())
