"""Hostile YAML: alias bombs, deep nesting, huge files and repeated keys are refused in one
short line (exit code 2), before any of it is expanded, repeated or recursed into."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def alias_bomb(levels: int, section: str = "data") -> str:
    """`<section>.seed` holds lists of lists of ...: 9**levels strings once expanded, from a
    few hundred bytes; each level is an anchor whose list repeats the previous one 9 times."""
    anchors = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        anchors.append(f"&l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return f"{section}:\n  seed: [" + ", ".join(anchors) + "]\n"


@pytest.fixture
def configs(tmp_path) -> Path:
    return tiny_config_files(tmp_path / "configs")


def refusal(configs: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_study_config(ConfigFiles.in_folder(configs), Overrides(theme_id=1))
    assert info.value.exit_code == 2
    return info.value


def test_alias_bomb_exits_2_with_one_short_line(configs, tmp_path):
    # Six levels: half a million values, a 4 MB message before the bound existed.
    (configs / "params.yaml").write_text(alias_bomb(6))
    env = {**os.environ,
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--theme-id", "1",
                             "--configs", str(configs), "--dry-run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 600, result.stderr[:2000]
    assert "params.yaml" in lines[0] and "aliases are expanded" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_billion_laughs_is_refused_without_expanding_it(configs):
    # 387 million values expanded; under an unknown key, so that code which expanded it
    # to show the value fails fast here instead of eating the machine's memory.
    (configs / "params.yaml").write_text(alias_bomb(9, section="laughs"))
    line = refusal(configs).one_line()
    assert "expands to more than 10000 values" in line and len(line) < 600


def test_aliases_that_nest_past_the_depth_bound_are_refused(configs):
    # Each anchor nests the previous one 30 levels down: 90 levels once expanded.
    nested = "\n".join(f"  k{i}: &a{i} " + "[" * 30 + (f"*a{i - 1}" if i else "1") + "]" * 30
                       for i in range(3))
    (configs / "params.yaml").write_text(f"unused:\n{nested}\n")
    assert "aliases nest deeper than 50 levels" in refusal(configs).one_line()


def test_an_alias_inside_its_own_anchor_is_refused(configs):
    (configs / "params.yaml").write_text("data:\n  seed: &loop [1, *loop]\n")
    assert "refers to a node that contains it" in refusal(configs).one_line()


def test_deep_nesting_is_a_config_error_not_a_recursion_error(configs):
    (configs / "config.yaml").write_text("cache_dir: " + "[" * 10_000 + "]" * 10_000 + "\n")
    line = refusal(configs).one_line()
    assert line.startswith(f"{configs / 'config.yaml'}: nesting deeper than 50 levels"), line


def test_repeated_key_names_the_key_and_both_lines(configs):
    (configs / "params.yaml").write_text(
        "defaults: &defaults {run_name: a}\n"
        "training:\n"
        "  <<: *defaults\n"
        "  run_name: b\n"            # overriding a merged key is not a repetition
        "data:\n"
        "  image_size: 16\n"
        "  channels: 1\n"
        "  image_size: 32\n")
    line = refusal(configs).one_line()
    assert line.startswith(f"{configs / 'params.yaml'}: key 'image_size': the same key "
                           "appears twice in one mapping (lines 6 and 8)."), line


def test_oversized_file_is_refused_before_parsing(configs):
    with (configs / "augments.yaml").open("a") as handle:
        handle.write("# " + "x" * (1024 * 1024) + "\n")
    line = refusal(configs).one_line()
    assert "augments.yaml: file is larger than 1048576 bytes" in line, line


def test_unreadable_scalar_is_a_config_error(configs):
    (configs / "params.yaml").write_text("training:\n  run_name: 2024-13-01\n")
    assert "a value cannot be read: month must be in 1..12" in refusal(configs).one_line()


def test_huge_values_are_capped_in_the_message(configs):
    (configs / "params.yaml").write_text(f"training:\n  batch_size: '{'9' * 100_000}'\n")
    line = refusal(configs).one_line()
    assert "training.batch_size" in line and len(line) < 600, line[:1000]
    huge = ConfigError("x" * 1_000_000, file="f.yaml", key="k" * 5000, fix="shorten it.")
    assert len(huge.one_line()) < 2000
    assert "(1000000 characters)" in huge.one_line() and huge.one_line().endswith("shorten it.")
