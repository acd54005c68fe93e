"""Warm starts (`launch.py --warm-start`): one real source study, recorded in the Django
DB and registered as the champion, then one real warm-started study read back through
its Optuna storage; the transfer case and the refusals are in-process calls of the
launcher's own functions on the same records."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")

import django  # noqa: E402

django.setup()

import launch  # noqa: E402
from data_access import selectors  # noqa: E402
from data_access.models import Theme, TuningStudy, TuningTrial  # noqa: E402
from data_access.recorder import DjangoStudyRecorder  # noqa: E402
from tests.conftest import theme_from_folder, tiny_config_files  # noqa: E402
from tuning.config import ConfigFiles, Overrides, load_study_config  # noqa: E402
from tuning.data.theme import ThemeSpec  # noqa: E402
from tuning.errors import ThemetuneError  # noqa: E402
from tuning.study import WARM_START_TAG, prepare_study, run_study  # noqa: E402
from tuning.tracking.progress import ProgressDisplay  # noqa: E402
from tuning.warm_start import carry  # noqa: E402
from web.forms import StudyForm  # noqa: E402
from web.launch.start import _launch_args  # noqa: E402

THEME = "warm_digits"
LR = "training.learning_rate"


def load(folder: Path, theme: ThemeSpec):
    return load_study_config(ConfigFiles.in_folder(folder), Overrides(theme_id=theme.id))


def configs(folder: Path, root: Path, **kwargs) -> Path:
    """The tiny configs, with one data cache for all, and only the best model logged."""
    infra = {"mlflow": {"tracking_uri": "sqlite:///mlflow.db", "log_models": "best"},
             "ray": {"storage_path": str(root / "ray_results")},
             "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2,
             "cache_dir": str(root / "cache")}
    return tiny_config_files(folder, infra=infra, **kwargs)


def narrowed_space(trials: list[TuningTrial], champion_lr: float) -> dict:
    """A learning-rate range that keeps the champion and leaves out at least one other
    source trial (the three draws differ)."""
    rates = sorted(t.params[LR] for t in trials)
    low, high = (champion_lr, 0.01) if champion_lr > rates[0] else (0.001, champion_lr)
    return {LR: {"type": "float", "low": low, "high": high, "log": True},
            "training.optimizer": {"type": "categorical", "choices": ["Adam", "AdamW"]}}


@pytest.fixture(scope="module")
def studies(ray_local, django_db_setup, django_db_blocker, digits_folder, tmp_path_factory):
    """A 3-trial source study (recorded, registered: the champion), then a 2-trial study
    warm-started from `champion,study:<source>` in a narrower space, with a SQLite
    Optuna storage to read back."""
    root = tmp_path_factory.mktemp("warm")
    with pytest.MonkeyPatch.context() as mp, django_db_blocker.unblock():
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.chdir(root)
        row = Theme.objects.create(name=THEME)
        theme = theme_from_folder(digits_folder, theme_id=row.id, name=THEME)
        try:
            source_recorder = DjangoStudyRecorder()
            source_config = load(configs(root / "source", root, n_trials=3), theme)
            run_study(prepare_study(source_config, theme), recorder=source_recorder,
                      progress=ProgressDisplay(min_interval_s=0))
            source = TuningStudy.objects.get(pk=source_recorder.study_id)
            source_trials = list(source.trials.filter(state="COMPLETE"))
            folder = configs(root / "warm", root, n_trials=2, space=narrowed_space(
                source_trials, source.best_params[LR]))
            config = load(folder, theme)
            names = launch.parse_args(["--warm-start", f"champion,study:{source.id}"]).warm_start
            sources = launch.read_warm_sources(names, config, theme)
            storage = f"sqlite:///{root / 'optuna.db'}"
            plan = prepare_study(config, theme, storage_url=storage, study_name="warm")
            launch.attach_warm_start(plan, sources)
            warm_recorder = DjangoStudyRecorder()
            outcome = run_study(plan, recorder=warm_recorder,
                                progress=ProgressDisplay(min_interval_s=0))
            yield {"theme": theme, "source": source, "source_trials": source_trials,
                   "plan": plan, "outcome": outcome, "storage": storage, "root": root,
                   "warm": TuningStudy.objects.get(pk=warm_recorder.study_id),
                   "config": config, "source_config": source_config}
        finally:
            TuningStudy.objects.filter(theme=row).delete()
            row.delete()


def test_study_source_gives_in_space_trials_and_skips_the_rest(studies):
    source, plan = studies["source"], studies["plan"]
    distributions = plan.distributions
    in_space = {t.number: t for t in studies["source_trials"]
                if distributions[LR]._contains(t.params[LR])}
    out = len(studies["source_trials"]) - len(in_space)
    assert in_space and out >= 1

    trials = optuna.load_study(study_name="warm", storage=studies["storage"]).trials
    given = [t for t in trials
             if t.user_attrs.get(carry.FROM_ATTR, "").startswith(f"study:{source.id}/")]
    assert [t.number for t in given] == list(range(len(in_space)))   # before any new one
    for t in given:
        recorded = in_space[int(t.user_attrs[carry.FROM_ATTR].rsplit(":", 1)[1])]
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.value == pytest.approx(recorded.value)
        assert t.params == recorded.params

    carried = {c.source: c for c in plan.warm_start.carried}
    study_carried = carried[f"study:{source.id}"]
    assert (study_carried.given, study_carried.skipped, study_carried.transfer) == \
        (len(in_space), out, False)
    assert study_carried.reasons == ((f"had {LR} outside the new space", out),)


def test_champion_is_the_first_new_trial_and_n_trials_counts_new_ones(studies):
    source, outcome = studies["source"], studies["outcome"]
    trials = optuna.load_study(study_name="warm", storage=studies["storage"]).trials
    new = [t for t in trials if not t.user_attrs.get(carry.FROM_ATTR, "").startswith("study:")]
    assert len(new) == 2 == sum(outcome.counts.values())
    assert new[0].user_attrs[carry.FROM_ATTR] == \
        f"champion:{source.id}/trial:{source.best_trial_number}"
    assert new[0].params == source.best_params
    first_recorded = studies["warm"].trials.order_by("number").first()
    assert first_recorded.number == new[0].number
    assert first_recorded.params == source.best_params


def test_the_sources_are_named_on_the_record_the_parent_run_and_the_optuna_study(studies):
    source, warm, outcome = studies["source"], studies["warm"], studies["outcome"]
    records = studies["plan"].warm_start.records()
    assert [r["source"] for r in records] == ["champion", f"study:{source.id}"]
    assert records[0] == {"source": "champion", "given": 1, "skipped": 0, "transfer": False}
    assert warm.warm_start == records
    assert warm.theme_content_hash == source.theme_content_hash != ""
    parent = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(outcome.parent_run_id)
    assert parent.data.params["warm_start"] == f"champion,study:{source.id}"
    assert parent.data.tags[WARM_START_TAG].startswith('[{"source": "champion"')
    stored = optuna.load_study(study_name="warm", storage=studies["storage"])
    assert stored.user_attrs[carry.STUDY_ATTR] == records


def test_giving_again_adds_nothing(studies):
    """A resumed driver, or a second launch sharing the Optuna study, finds the keys."""
    stored = optuna.load_study(study_name="warm", storage=studies["storage"])
    before = len(stored.trials)
    plan = studies["plan"]
    assert carry.give(stored, plan.warm_start, plan.distributions) == 0
    assert len(stored.trials) == before


def test_a_changed_theme_only_orders_what_is_tried_first(studies, capsys):
    theme, source, config = studies["theme"], studies["source"], studies["source_config"]
    changed = ThemeSpec(theme.id, theme.name, theme.class_names, theme.samples[:-1],
                        theme.media_root)
    sources = launch.read_warm_sources((f"study:{source.id}",), config, changed)
    plan = prepare_study(config, changed, dry_run=True)
    launch.attach_warm_start(plan, sources)
    (one,) = plan.warm_start.carried
    assert one.transfer and plan.warm_start.given == ()
    values = sorted((t.value for t in studies["source_trials"]), reverse=True)
    assert [t.value for t in plan.warm_start.first] == values[:carry.TRANSFER_FIRST]
    assert "transfer" in capsys.readouterr().out

    study = optuna.create_study(direction="maximize")
    carry.give(study, plan.warm_start, plan.distributions)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.WAITING}


@pytest.mark.parametrize("argv, said", [
    (["--warm-start", "best"], "unknown source 'best'"),
    (["--warm-start", "study:x"], "unknown source 'study:x'"),
    (["--warm-start", "theme,theme"], "a source is named twice"),
    (["--warm-start", ""], "name at least one source"),
])
def test_bad_source_names_are_one_line(argv, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        launch.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err and err.count("\n") == 1
    assert "key '--warm-start'" in err


@pytest.mark.django_db
def test_refusals(studies):
    theme, source, config = studies["theme"], studies["source"], studies["source_config"]
    other_row = Theme.objects.create(name="warm_other")
    other = ThemeSpec(other_row.id, "warm_other", theme.class_names, theme.samples,
                      theme.media_root)
    on_valid = load(configs(studies["root"] / "on_valid", studies["root"],
                            study={"metric": "valid_acc"}), theme)
    cases = [
        (("study:987654",), config, theme, "study:987654 is not a study"),
        ((f"study:{source.id}",), config, other, f"tuned theme {theme.id}, not theme"),
        ((f"study:{source.id}",), on_valid, theme, "chose its trials on maximize test_acc"),
        (("theme",), config, other, "theme has no finished trial"),
        (("champion",), config, other, "theme 'warm_other' has no champion yet"),
    ]
    for names, cfg, spec, said in cases:
        with pytest.raises(ThemetuneError) as refused:
            launch.read_warm_sources(names, cfg, spec)
        line = refused.value.one_line()
        assert said in line and "key '--warm-start'" in line and "Fix:" in line, line
    with pytest.raises(ThemetuneError, match="resumed study"):
        launch.read_warm_sources(("theme",), config, theme, resuming=True)


def test_the_web_form_lists_the_studies_and_preselects_the_champion(studies):
    theme, source = studies["theme"], studies["source"]
    themes = [t for t in selectors.theme_list() if t.id == theme.id]
    form = StudyForm(initial={"theme": theme.id}, themes=themes, presets=[])
    offered = dict(form.fields["warm_start"].choices)
    assert "champion" in offered and f"study:{source.id}" in offered
    assert form.initial["warm_start"] == ["champion"]
    assert _launch_args(theme.id, 9, "configs", ["champion", f"study:{source.id}"])[-2:] == \
        ["--warm-start", f"champion,study:{source.id}"]
