"""The current champion scored again, on a new study's images, with its own model.

A champion's recorded value was measured on the theme as it was when it was trained.
Once the theme's content changed (tuning.data.keys.theme_content_hash), that value and a
new study's are figures of different images: the champion's shipped model (loaded with
the code it shipped with, tracking.model_loading) labels the new study's split, from
the raw files as any user of the model would send them, and is scored on the study's
metric there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuning.data import TrialData
from tuning.data.theme import ThemeSpec
from tuning.evaluation import scores
from tuning.tracking import model_loading, registry

# Files per predict call: bounds the bytes and decoded images held at once.
BATCH = 256
SPLITS = {"valid": "validation", "test": "test"}


@dataclass(frozen=True)
class ChampionScore:
    value: float | None      # None: it could not be scored (`problem` says why)
    split: str               # "validation" or "test"
    images: int
    problem: str = ""


def split_files(data: TrialData, theme: ThemeSpec, split: str) -> tuple[list[str], np.ndarray]:
    """The source image files of one of the study's splits and their labels, in order."""
    sources = dict.fromkeys(np.asarray(getattr(data, split).sources).tolist())
    samples = [theme.samples[int(i)] for i in sources]
    return [s.path for s in samples], np.array([s.label for s in samples], dtype=np.int64)


def score_champion(version_source: str, *, tracking_uri: str, metric: str, data: TrialData,
                   theme: ThemeSpec) -> ChampionScore:
    """The model at `version_source` (a registry version's download URI) on the split
    that `metric` names, by that metric. Never raises for the model's sake: a champion
    that cannot be loaded or scored is told in `problem`."""
    split = metric.split("_", 1)[0]
    if split not in SPLITS:
        return ChampionScore(None, split, 0, f"a {split}_* metric is not rescored (only "
                                             f"valid_* and test_* metrics are)")
    paths, labels = split_files(data, theme, split)
    try:
        model = model_loading.load_model(version_source, tracking_uri=tracking_uri)
        predicted, true_probability = _predict(model, paths, labels, theme.class_names)
    except Exception as exc:   # an old model's own failure is its, not this study's
        return ChampionScore(None, SPLITS[split], len(paths),
                             f"it could not be loaded or scored: {registry.first_line(exc)}")
    value = scores.score(scores.metric_kind(metric), labels, predicted, theme.num_classes,
                         true_probability=true_probability)
    return ChampionScore(value, SPLITS[split], len(paths))


def _predict(model, paths: list[str], labels: np.ndarray, class_names) -> tuple:
    """Per file: the predicted class as an index of `class_names` (len(class_names) when
    the model answers a class the theme does not have), and the model's probability of
    the file's true class (0 when the model does not know that class)."""
    import pandas as pd

    known = model.class_names
    column_of = {name: known.index(name) for name in class_names if name in known}
    predicted = np.empty(len(paths), dtype=np.int64)
    true_probability = np.zeros(len(paths), dtype=np.float64)
    for start in range(0, len(paths), BATCH):
        batch = paths[start:start + BATCH]
        frame = model.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in batch]}))
        for offset, (_, row) in enumerate(frame.iterrows()):
            values, error = model.split_row(row)
            if error:
                raise ValueError(f"{batch[offset]}: {error}")
            i = start + offset
            label = str(values.iloc[0])
            predicted[i] = class_names.index(label) if label in class_names else len(class_names)
            true_name = class_names[labels[i]]
            if true_name in column_of:
                true_probability[i] = float(values.iloc[2 + column_of[true_name]])
    return predicted, true_probability
