"""Optuna's own plots, computed from the recorded trials.

The study may have run with in-memory Optuna storage, so the plots never read Optuna's
storage: an in-memory Optuna study is rebuilt from the TuningTrial rows and the
TuningParamConfig distributions, and handed to optuna.visualization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
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
    draw: Callable[[optuna.Study], Any]
    min_complete: int


def _history(study):
    return optuna.visualization.plot_optimization_history(study)


def _importance(study):
    return optuna.visualization.plot_param_importances(study)


def _parallel(study):
    return optuna.visualization.plot_parallel_coordinate(study)


def _slice(study):
    return optuna.visualization.plot_slice(study)


KINDS: dict[str, PlotKind] = {k.slug: k for k in (
    PlotKind("history", _("Optimization history"), _history, 1),
    # Importance compares trials: it needs at least two finished ones.
    PlotKind("importance", _("Parameter importance"), _importance, 2),
    PlotKind("parallel", _("Parallel coordinates"), _parallel, 1),
    PlotKind("slice", _("Slice"), _slice, 1),
)}


class PlotUnavailable(Exception):
    """Not enough finished trials yet for this plot."""


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
        raise PlotUnavailable(kind.min_complete)
    figure = kind.draw(optuna_study(study, trials))
    figure.update_layout(margin={"l": 60, "r": 30, "t": 60, "b": 60}, autosize=True)
    return figure.to_json()
