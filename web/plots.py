"""The study's plots, computed from the recorded trials: Optuna's own, and the
learning curves.

The study may have run with in-memory Optuna storage, so the plots never read Optuna's
storage: an in-memory Optuna study is rebuilt from the TuningTrial rows and the
TuningParamConfig distributions, and handed to optuna.visualization. The learning
curves are drawn from each trial's per-epoch metrics (TuningTrial.metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState as OptunaState

from data_access.selectors import ParamConfigInfo, StudyInfo, TrialInfo
from tuning.numbers import is_finite_number
from tuning.states import TrialState

# Optuna logs each study creation at INFO; one per plot request is noise.
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class PlotKind:
    slug: str
    title: Any
    draw: Callable[[StudyInfo, list[TrialInfo]], Any]   # a plotly figure
    min_complete: int


class PlotUnavailable(Exception):
    """Not enough trials yet for this plot; the one argument says what it waits for."""


def _optuna_plot(plot: Callable[[optuna.Study], Any]) -> Callable[..., Any]:
    return lambda study, trials: plot(optuna_study(study, trials))


def curve_metric(metric: str) -> str:
    """The per-epoch metric behind a study's metric: a test_ metric is reported once,
    after the last epoch, so its curve is its validation counterpart's."""
    return "valid_" + metric.removeprefix("test_") if metric.startswith("test_") else metric


def _epochs(trial: TrialInfo, metric: str) -> tuple[list[int], list[float]]:
    points = [(m["epoch"], m[metric]) for m in trial.metrics
              if isinstance(m.get("epoch"), int) and is_finite_number(m.get(metric))]
    return [p[0] for p in points], [p[1] for p in points]


BEST_COLOR = "#c0392b"
# The other trials in quiet colours, none of them near the best trial's red.
OTHER_COLORS = ("#4c78a8", "#72b7b2", "#54a24b", "#9d755d", "#b279a2", "#7f8ea3", "#eeca3b")


def _learning_curves(study: StudyInfo, trials: list[TrialInfo]):
    import plotly.graph_objects as go  # heavy; only this plot needs it directly

    metric = curve_metric(study.metric)
    figure = go.Figure()
    # The best trial last, so that its line is drawn over the others.
    for trial in sorted(trials, key=lambda t: t.number == study.best_trial_number):
        epochs, values = _epochs(trial, metric)
        if not epochs:
            continue
        best = trial.number == study.best_trial_number
        name = (gettext("Trial %(n)s (best)") if best else gettext("Trial %(n)s")) % {
            "n": trial.number}
        figure.add_trace(go.Scatter(
            x=epochs, y=values, name=name, mode="lines+markers",
            line={"width": 4, "color": BEST_COLOR} if best else {
                "width": 1.5, "color": OTHER_COLORS[trial.number % len(OTHER_COLORS)]},
            opacity=1.0 if best else 0.6))
    if not figure.data:
        raise PlotUnavailable(gettext(
            "The learning curves appear as soon as a trial reports %(metric)s for an "
            "epoch.") % {"metric": metric})
    figure.update_layout(xaxis_title=gettext("Epoch"), legend_title_text=gettext("Trial"),
                         yaxis_title=metric)
    if max(max(trace.x) for trace in figure.data) <= 20:
        figure.update_xaxes(dtick=1)   # whole epochs, not 1.5
    return figure


KINDS: dict[str, PlotKind] = {k.slug: k for k in (
    PlotKind("history", _("Optimization history"),
             _optuna_plot(optuna.visualization.plot_optimization_history), 1),
    # Importance compares trials: it needs at least two finished ones.
    PlotKind("importance", _("Parameter importance"),
             _optuna_plot(optuna.visualization.plot_param_importances), 2),
    PlotKind("parallel", _("Parallel coordinates"),
             _optuna_plot(optuna.visualization.plot_parallel_coordinate), 1),
    PlotKind("slice", _("Slice"), _optuna_plot(optuna.visualization.plot_slice), 1),
    # Each epoch's metric, reported while a trial runs: no finished trial needed.
    PlotKind("learning-curves", _("Learning curves"), _learning_curves, 0),
)}


# A trial killed with its study is, to Optuna, one that failed.
_STATES = {TrialState.COMPLETE: OptunaState.COMPLETE, TrialState.PRUNED: OptunaState.PRUNED,
           TrialState.FAIL: OptunaState.FAIL, TrialState.KILLED: OptunaState.FAIL,
           TrialState.RUNNING: OptunaState.RUNNING}


def _distribution(config: ParamConfigInfo) -> BaseDistribution:
    if config.type == "float":
        return FloatDistribution(config.low, config.high, log=config.log, step=config.step)
    if config.type == "int":
        return IntDistribution(int(config.low), int(config.high), log=config.log,
                               step=int(config.step or 1))
    return CategoricalDistribution(tuple(config.choices or ()))


def _fits(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def optuna_study(study: StudyInfo, trials: list[TrialInfo]) -> optuna.Study:
    """An in-memory Optuna study holding the recorded trials."""
    distributions = {c.name: _distribution(c) for c in study.param_configs}
    rebuilt = optuna.create_study(direction=study.direction,
                                  study_name=study.optuna_study_name or study.name)
    frozen = []
    for trial in trials:
        state = _STATES.get(trial.state, OptunaState.FAIL)
        value = trial.value
        if state == OptunaState.COMPLETE and not is_finite_number(value):
            state, value = OptunaState.FAIL, None
        # A value outside the recorded space (edited config, old row) cannot be plotted.
        params = {name: v for name, v in trial.params.items()
                  if name in distributions and _fits(distributions[name], v)}
        frozen.append(optuna.trial.create_trial(
            state=state, value=value if state == OptunaState.COMPLETE else None,
            params=params, distributions={n: distributions[n] for n in params},
            user_attrs={"number": trial.number}))
    rebuilt.add_trials(frozen)
    return rebuilt


def figure_json(kind: PlotKind, study: StudyInfo, trials: list[TrialInfo]) -> str:
    """The plotly figure as JSON. Raises PlotUnavailable while too few trials finished."""
    complete = sum(1 for t in trials if t.state == TrialState.COMPLETE and t.value is not None)
    if complete < kind.min_complete:
        raise PlotUnavailable(gettext(
            "This plot needs at least %(n)s completed trial(s); it appears as soon as "
            "they finish.") % {"n": kind.min_complete})
    figure = kind.draw(study, trials)
    # Optuna titles its figures in English; the page's language names them here.
    figure.update_layout(title={"text": str(kind.title)}, autosize=True,
                         margin={"l": 60, "r": 30, "t": 60, "b": 60})
    return figure.to_json()
