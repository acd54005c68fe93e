"""A study's best params as a params.yaml, and as a theme's defaults."""

from __future__ import annotations

from typing import Any

import yaml

from data_access.selectors import StudyInfo
from tuning.config.params import deep_merge, set_dotted


def nested(best_params: dict[str, Any]) -> dict[str, Any]:
    """{"training.learning_rate": 0.01} -> {"training": {"learning_rate": 0.01}}."""
    tree: dict[str, Any] = {}
    for dotted, value in best_params.items():
        tree = set_dotted(tree, dotted, value)
    return tree


def params_yaml(study: StudyInfo) -> str:
    """The params the best trial trained with: the study's merged params (base_params <
    params.yaml) with the sampled values set, as a params.yaml for the next study."""
    merged = deep_merge(study.resolved_config.get("params") or {},
                        nested(study.best_params or {}))
    header = (f"# Best params of study {study.id} '{study.name}' (theme {study.theme_name}): "
              f"trial {study.best_trial_number}, {study.metric} = {study.best_value}\n")
    return header + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)
