"""The chosen model's evidence: the new metrics, the held-out evaluation on the parent
run and in the recorder, the registry's tags, and champion rescoring.

One finished study (2 trials of 1 epoch, 16 px gray digits) is shared by every read-only
check; the rescoring test then runs a second, smaller study on a changed theme in the
same store.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

from tests.conftest import ROOT, theme_from_folder, tiny_config_files
from theme_classifier.network import build_network
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.config.params import REPORTED_METRICS, epoch_metric_for, selection_split
from tuning.data import PreprocessSettings, prepare_data
from tuning.data.shards import prepare_shards
from tuning.evaluation import scores
from tuning.evaluation.held_out import evaluate_best
from tuning.evaluation.rescoring import ChampionScore, split_files
from tuning.study import StudyOutcome, prepare_study, run_study
from tuning.tracking import evidence, registry
from tuning.tracking.progress import ProgressDisplay
from tuning.tracking.recording import NullRecorder, StudyEvaluation

NEW_METRICS = ("valid_balanced_acc", "valid_macro_f1", "test_balanced_acc", "test_macro_f1")


# ---------------------------------------------------------------- the figures, by hand


def test_balanced_accuracy_and_macro_f1_by_hand():
    # 3 classes, 10 images: true 0 x6, 1 x3, 2 x1.
    true = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
    pred = [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    confusion = scores.confusion_matrix(true, pred, 3)
    assert confusion.tolist() == [[5, 1, 0], [1, 2, 0], [1, 0, 0]]
    assert scores.accuracy(confusion) == pytest.approx(0.7)
    # Recalls 5/6, 2/3, 0: their mean.
    assert scores.balanced_accuracy(confusion) == pytest.approx((5 / 6 + 2 / 3 + 0) / 3)
    # Class 0: precision 5/7, recall 5/6; class 1: 2/3 and 2/3; class 2: never predicted.
    f1_0 = 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)
    assert scores.macro_f1(confusion) == pytest.approx((f1_0 + 2 / 3 + 0) / 3)
    stats = scores.per_class(confusion)
    assert stats["support"].tolist() == [6, 3, 1]
    assert stats["precision"].tolist() == pytest.approx([5 / 7, 2 / 3, 0])


def test_figures_agree_with_sklearn():
    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 7):
        true = rng.integers(0, n_classes, 200)
        pred = np.where(rng.random(200) < 0.6, true, rng.integers(0, n_classes, 200))
        confusion = scores.confusion_matrix(true, pred, n_classes)
        labels = list(range(n_classes))
        assert scores.balanced_accuracy(confusion) == pytest.approx(
            balanced_accuracy_score(true, pred))
        assert scores.macro_f1(confusion) == pytest.approx(
            f1_score(true, pred, labels=labels, average="macro", zero_division=0))
        p, r, f, s = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
        stats = scores.per_class(confusion)
        assert stats["precision"] == pytest.approx(p) and stats["recall"] == pytest.approx(r)
        assert stats["f1"] == pytest.approx(f) and stats["support"].tolist() == s.tolist()


def test_a_prediction_outside_the_themes_classes_is_wrong_for_every_figure():
    # A champion that answers a class the theme no longer has (index 2 of 2 classes).
    true, pred = [0, 0, 1, 1], [0, 2, 1, 2]
    for kind, expected in (("acc", 0.5), ("balanced_acc", 0.5),
                           ("macro_f1", 2 / 3)):   # both precisions 1, recalls 1/2
        assert scores.score(kind, true, pred, 2) == pytest.approx(expected)
    assert scores.score("loss", true, pred, 2, true_probability=[1.0, 0.0, 1.0, 0.5]) == \
        pytest.approx((0 + -np.log(scores.MIN_PROBABILITY) + 0 - np.log(0.5)) / 4)


def test_new_metrics_are_selectable_and_follow_their_validation_counterpart(tmp_path):
    assert set(NEW_METRICS) <= set(REPORTED_METRICS)
    for metric, epoch in (("valid_balanced_acc", "valid_balanced_acc"),
                          ("test_balanced_acc", "valid_balanced_acc"),
                          ("test_macro_f1", "valid_macro_f1"), ("test_acc", "valid_acc"),
                          ("test_image_acc", "valid_acc"), ("test_loss", "valid_loss")):
        assert epoch_metric_for(metric) == epoch
    folder = tiny_config_files(tmp_path, study={"metric": "test_macro_f1"})
    config = load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=1))
    assert config.study.metric == "test_macro_f1" and config.study.direction == "maximize"


def test_shipped_configs_select_on_validation_and_list_the_new_metrics():
    for folder in ("configs", "configs/demo", "configs/large"):
        config = load_study_config(ConfigFiles.in_folder(ROOT / folder), Overrides(theme_id=1))
        assert selection_split(config.study.metric) == "validation", folder
    comment = (ROOT / "configs/optuna_params.yaml").read_text()
    assert all(name in comment for name in REPORTED_METRICS)


def test_class_names_become_distinct_metric_keys():
    assert evidence.class_keys(["cat", "hot dog", "x/y?", "x_y", "日本"]) == \
        ["cat", "hot_dog", "x_y", "x_y_3", "class4"]


@pytest.mark.parametrize("patches", [False, True])
def test_held_out_evaluation_is_the_same_from_arrays_and_from_shards(tmp_path, digits_theme,
                                                                      patches):
    """Either data path gives one answer per source image, the same for the same network."""
    settings = PreprocessSettings(image_size=16, channels=1, brightness=None,
                                  patch_size=8 if patches else None,
                                  patch_stride=8 if patches else None,
                                  split=(0.6, 0.2, 0.2), seed=3, skip_unreadable=False)
    resident = prepare_data(digits_theme, settings, cache_dir=tmp_path / "cache")
    sharded = prepare_shards(digits_theme, settings, root=tmp_path / "shards")
    torch.manual_seed(0)
    network = build_network("ResNet18", num_classes=digits_theme.num_classes, in_channels=1)
    checkpoint = {"model": network.state_dict(), "mean": [0.3], "std": [0.35]}
    a, b = (evaluate_best(data, digits_theme, trial_number=4, checkpoint=checkpoint,
                          architecture="ResNet18") for data in (resident, sharded))
    n_images = len(set(resident.test.sources.tolist()))
    assert sum(map(sum, a.confusion)) == n_images
    assert a.confusion == b.confusion and a.metrics == pytest.approx(b.metrics)
    assert a.trial_number == 4 and a.split == "test"
    assert a.metrics["test_acc"] == pytest.approx(np.trace(a.confusion) / n_images)


# ---------------------------------------------------------------- the comparison, alone


@dataclass
class Version:
    """What registry._compare reads of a model version: its number and tags."""
    version: str
    tags: dict


def champion_version(**tags) -> Version:
    return Version("1", {registry.METRIC_TAG: "valid_acc", registry.DIRECTION_TAG: "maximize",
                         registry.VALUE_TAG: "0.9", **tags})


def compare(current, value, theme_hash, rescored: ChampionScore | None):
    return registry._compare(current, metric="valid_acc", direction="maximize", value=value,
                             theme_hash=theme_hash,
                             rescore=(lambda version: rescored) if rescored else None)


def test_same_theme_content_compares_the_recorded_values():
    current = champion_version(**{registry.THEME_HASH_TAG: "a" * 64})
    moved, _, lines = compare(current, 0.8, "a" * 64, ChampionScore(0.1, "validation", 9))
    assert not moved   # the rescored 0.1 was not looked at
    assert lines[0] == "champion comparison: recorded values (same theme content)"
    assert "0.8000 does not beat champion version 1's 0.9000" in lines[1]


def test_other_theme_content_compares_with_the_rescored_value():
    current = champion_version(**{registry.THEME_HASH_TAG: "a" * 64})
    moved, reason, lines = compare(current, 0.8, "b" * 64, ChampionScore(0.5, "validation", 9))
    assert moved and "rescored" in reason
    assert lines[0].startswith("champion comparison: rescored; champion version 1 was "
                               "trained on other theme content (hash aaaaaaaaaaaa, this "
                               "study hash bbbbbbbbbbbb)")
    assert "(9 images)" in lines[0]
    assert lines[1] == ("champion comparison: valid_acc this study's best 0.8000, champion "
                        "version 1 rescored 0.5000 (recorded 0.9): beats")


def test_a_champion_that_cannot_be_scored_is_compared_as_recorded():
    current = champion_version()   # an older champion: no hash recorded
    problem = ChampionScore(None, "validation", 9, "it could not be loaded or scored: gone")
    moved, _, lines = compare(current, 0.95, "b" * 64, problem)
    assert moved
    assert lines[0] == ("champion comparison: recorded values; champion version 1 was "
                        "trained on other theme content (no recorded hash, this study hash "
                        "bbbbbbbbbbbb), but it could not be loaded or scored: gone")
    assert "0.9500 beats champion version 1's 0.9000" in lines[1]


# ---------------------------------------------------------------- one real study


class EvidenceRecorder(NullRecorder):
    def __init__(self):
        self.evaluations: list[StudyEvaluation] = []

    def study_evaluated(self, event: StudyEvaluation) -> None:
        self.evaluations.append(event)


class Lines(logging.Handler):
    """The driver's output lines (tracking.output's `themetune` logger)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@dataclass
class Study:
    outcome: StudyOutcome
    plan: object
    recorder: EvidenceRecorder
    lines: list[str]
    tracking_uri: str
    folder: Path

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    @property
    def evaluation(self) -> StudyEvaluation:
        return self.recorder.evaluations[0]


def run(folder: Path, theme, tracking_uri: str, *, n_trials: int) -> Study:
    recorder, lines = EvidenceRecorder(), Lines()
    logger = logging.getLogger("themetune")
    logger.addHandler(lines)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
            mp.chdir(folder)
            configs = tiny_config_files(folder / f"configs_{theme.id}", n_trials=n_trials,
                                        study={"metric": "valid_acc"})
            config = load_study_config(ConfigFiles.in_folder(configs),
                                       Overrides(theme_id=theme.id))
            plan = prepare_study(config, theme)
            outcome = run_study(plan, recorder=recorder,
                                progress=ProgressDisplay(min_interval_s=3600))
    finally:
        logger.removeHandler(lines)
    return Study(outcome, plan, recorder, lines.lines, tracking_uri, folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory, digits_folder) -> Path:
    """A copy of the digits this module may change."""
    return Path(shutil.copytree(digits_folder, tmp_path_factory.mktemp("evidence") / "images"))


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory, images) -> Study:
    folder = tmp_path_factory.mktemp("evidence_store")
    return run(folder, theme_from_folder(images, name="evidence"),
               f"sqlite:///{folder / 'mlflow.db'}", n_trials=2)


def test_every_trial_reports_the_new_metrics_each_epoch(study):
    client = study.client
    children = client.search_runs(
        [study.outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{study.outcome.parent_run_id}'")
    assert len(children) == 2
    for child in children:
        assert set(NEW_METRICS) <= set(child.data.metrics)
        for name in ("valid_balanced_acc", "valid_macro_f1"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, name)] == [1]
            assert 0 <= child.data.metrics[name] <= 1


def test_the_champion_carries_its_selection_and_held_out_test_figures(study):
    client = study.client
    champion = client.get_model_version_by_alias(study.outcome.model_name, "champion")
    tags = champion.tags
    assert tags["themetune.selection_metric"] == "valid_acc"
    assert selection_split(tags["themetune.selection_metric"]) == "validation"
    assert float(tags["themetune.selection_value"]) == pytest.approx(study.outcome.best_value)
    assert tags["themetune.theme_content_hash"] == study.plan.theme_hash
    for name in ("test_acc", "test_balanced_acc", "test_macro_f1"):
        assert float(tags[f"themetune.{name}"]) == pytest.approx(study.evaluation.metrics[name])
    parent = client.get_run(study.outcome.parent_run_id)
    assert parent.data.tags["themetune.selection_split"] == "validation"
    assert any(line.startswith("held-out evaluation of trial ") for line in study.lines)


def test_the_evaluation_is_on_the_parent_run_and_in_the_recorder(study, tmp_path):
    evaluation, theme = study.evaluation, study.plan.theme
    assert len(study.recorder.evaluations) == 1
    assert evaluation.trial_number == study.outcome.best_number
    assert evaluation.split == "test" and evaluation.class_names == theme.class_names
    n_test = len(set(study.plan.data.test.sources.tolist()))
    assert sum(map(sum, evaluation.confusion)) == n_test
    assert [row["class"] for row in evaluation.per_class] == list(theme.class_names)
    assert set(evaluation.per_class[0]) == {"class", "precision", "recall", "f1", "support"}
    assert len(evaluation.misclassified) <= 24
    for row in evaluation.misclassified:
        assert set(row) == {"path", "true", "predicted", "confidence"}
        assert row["true"] != row["predicted"] and Path(row["path"]).is_file()

    client, run_id = study.client, study.outcome.parent_run_id
    metrics = client.get_run(run_id).data.metrics
    for name, value in evidence.evaluation_metrics(evaluation).items():
        assert metrics[name] == pytest.approx(value), name
    assert f"test_precision_{theme.class_names[0]}" in metrics
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert artifacts == {evidence.PER_CLASS_TABLE, evidence.MISCLASSIFIED_TABLE,
                         evidence.CONFUSION_JSON, evidence.CONFUSION_FIGURE}
    for path, rows in ((evidence.PER_CLASS_TABLE, evaluation.per_class),
                       (evidence.MISCLASSIFIED_TABLE, evaluation.misclassified)):
        # MLflow's table format: pandas' "split" JSON.
        table = json.loads(Path(client.download_artifacts(run_id, path, str(tmp_path)))
                           .read_text())
        assert [dict(zip(table["columns"], values)) for values in table["data"]] == \
            [pytest.approx(row) for row in rows]
    numbers = mlflow.artifacts.load_dict(f"runs:/{run_id}/{evidence.CONFUSION_JSON}")
    assert numbers["matrix"] == evaluation.confusion


def test_the_evaluation_agrees_with_a_recount_from_the_registered_model(study):
    """The registered model labels the raw test files; counted, they give the same
    confusion matrix and per-class figures as the study logged."""
    theme = study.plan.theme
    paths, labels = split_files(study.plan.data, theme, "test")
    mlflow.set_tracking_uri(study.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{study.outcome.model_name}@champion")
    frame = model.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]}))
    predicted = [theme.class_names.index(label) for label in frame["label"]]
    recount = scores.confusion_matrix(labels, predicted, theme.num_classes)
    logged = np.array(study.evaluation.confusion)
    # The same images through the same network: float rounding between the trial's
    # batches and the model's may move one image at most.
    assert np.abs(recount - logged).sum() <= 2, (recount, logged)
    if (recount == logged).all():
        stats = scores.per_class(recount)
        for c, row in enumerate(study.evaluation.per_class):
            assert row["f1"] == pytest.approx(stats["f1"][c])
            assert row["support"] == stats["support"][c]


def test_a_changed_theme_rescored_the_champion_before_moving_it(study, images):
    """Last here: it registers a second version and may move the alias."""
    before = study.client.get_model_version_by_alias(study.outcome.model_name, "champion")
    theme = study.plan.theme
    # Two images per class fewer: another content hash, the same classes.
    keep = [s for s in theme.samples if not s.path.endswith(("0000.png", "0001.png"))]
    changed = replace(theme_from_folder(images, name="evidence"), samples=tuple(keep))
    second = run(study.folder, changed, study.tracking_uri, n_trials=1)
    assert second.plan.theme_hash != study.plan.theme_hash

    # The champion's own model on the second study's validation files, recounted here.
    paths, labels = split_files(second.plan.data, changed, "valid")
    mlflow.set_tracking_uri(study.tracking_uri)
    old = mlflow.pyfunc.load_model(f"models:/{study.outcome.model_name}/{before.version}")
    frame = old.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]}))
    rescored = float((frame["label"].to_numpy() == np.array(
        [changed.class_names[i] for i in labels])).mean())

    said = [line for line in second.lines if line.startswith("champion comparison: ")]
    assert len(said) == 2, second.lines
    assert said[0].startswith(f"champion comparison: rescored; champion version "
                              f"{before.version} was trained on other theme content")
    assert f"its own model labelled this study's validation split ({len(paths)} images)" \
        in said[0]
    value = second.outcome.best_value
    moves = value > rescored
    assert said[1].startswith(f"champion comparison: valid_acc this study's best {value:.4f}, "
                              f"champion version {before.version} rescored {rescored:.4f}")
    assert second.outcome.registration.moved is moves
    now = second.client.get_model_version_by_alias(study.outcome.model_name, "champion")
    assert now.version == (second.outcome.model_version if moves else before.version)
