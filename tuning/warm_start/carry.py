"""What of the earlier studies a new study's searcher gets, and giving it to Optuna.

A source trial whose parameters all lie in the new search space (the same names, each
value inside its range or choices) is given to the Optuna study as a finished trial with
its recorded value: TPE then starts from it as from its own. When the theme's images
changed since the source study ran (its content hash differs, or it has none), its
values no longer measure this study's objective: only its best few trials are enqueued,
to be tried first (a transfer start). The champion's parameters are always enqueued,
first. Enqueued trials are new trials and count in n_trials; given ones do not.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from tuning.warm_start.sources import THEME, PriorStudy, PriorTrial, Source

# How many of a transfer source's best trials are tried first.
TRANSFER_FIRST = 3
# On each trial given or enqueued: where it came from ("study:12/trial:3"). A study
# that already holds a key (a resumed driver, a second launch sharing a persistent
# Optuna study) is not given it again.
FROM_ATTR = "themetune.warm_start.from"
# On the Optuna study: the sources and what each carried over (as StudyStart.warm_start).
STUDY_ATTR = "themetune.warm_start"


@dataclass(frozen=True)
class Carried:
    """What one source carried over: `given` trials (finished ones, or enqueued for the
    champion and transfer sources), `skipped` with the reasons counted."""
    source: str
    given: int
    skipped: int
    transfer: bool
    reasons: tuple[tuple[str, int], ...] = ()
    enqueued: bool = False
    champion: str = ""

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "given": self.given, "skipped": self.skipped,
                "transfer": self.transfer}

    def line(self) -> str:
        name = f"{self.source} ({self.champion})" if self.champion else self.source
        if self.enqueued:
            what = f"{self.given} tried first"
        else:
            what = f"{self.given} finished trial{'s' * (self.given != 1)} given to the searcher"
        why = "; ".join(f"{n} {reason}" for reason, n in self.reasons)
        skipped = f", {self.skipped} skipped ({why})" if self.skipped else ""
        transfer = (" [transfer: the theme changed since, so its values only order what "
                    "is tried first]" if self.transfer and not self.champion else "")
        return f"warm start from {name}: {what}{skipped}{transfer}"


@dataclass(frozen=True)
class WarmTrial:
    key: str                        # FROM_ATTR
    params: dict[str, Any]
    value: float


@dataclass(frozen=True)
class WarmStart:
    carried: tuple[Carried, ...]
    given: tuple[WarmTrial, ...]     # finished trials, with their values
    first: tuple[WarmTrial, ...]     # enqueued, in order: the champion first

    def records(self) -> list[dict[str, Any]]:
        return [c.record() for c in self.carried]

    def lines(self) -> list[str]:
        return [c.line() for c in self.carried]

    def names(self) -> str:
        return ",".join(c.source for c in self.carried)


def outside_space(params: dict[str, Any], distributions: dict[str, BaseDistribution]
                  ) -> str | None:
    """Why a trial's parameters are not a point of the search space, or None."""
    for name, dist in distributions.items():
        if name not in params:
            return f"did not tune {name}"
        try:
            inside = dist._contains(dist.to_internal_repr(params[name]))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            return f"had {name} outside the new space"
    extra = sorted(set(params) - set(distributions))
    return f"tuned {extra[0]}, fixed here" if extra else None


def plan_warm_start(sources: list[Source], *, distributions: dict[str, BaseDistribution],
                    metric: str, direction: str, theme_hash: str) -> WarmStart:
    """What each source carries over into a study of this space, metric and theme."""
    seen: set[str] = set()
    carried, given, first = [], [], []
    for source in sorted(sources, key=lambda s: not s.is_champion):   # the champion first
        one = _Plan(source, distributions, metric, direction, theme_hash, seen)
        carried.append(one.carried())
        given.extend(one.given)
        first.extend(one.first)
    return WarmStart(carried=tuple(carried), given=tuple(given), first=tuple(first))


class _Plan:
    """One source's trials sorted into given, enqueued and skipped (with why)."""

    def __init__(self, source: Source, distributions, metric: str, direction: str,
                 theme_hash: str, seen: set[str]):
        self.source, self.seen = source, seen
        self.given: list[WarmTrial] = []
        self.first: list[WarmTrial] = []
        self.reasons: Counter[str] = Counter()
        self.transfer = False
        best_first = direction == "maximize"
        for study in source.studies:
            if source.name == THEME and (study.metric, study.direction) != (metric, direction):
                self.reasons["of studies on another metric"] += len(study.trials)
                continue
            changed = not study.theme_content_hash or study.theme_content_hash != theme_hash
            self.transfer = self.transfer or changed
            trials = self._in_space(study, distributions)
            if source.is_champion:
                self.first.extend(trials)
            elif changed:
                trials.sort(key=lambda t: t.value, reverse=best_first)
                self.first.extend(trials[:TRANSFER_FIRST])
                if trials[TRANSFER_FIRST:]:
                    self.reasons[f"beyond the best {TRANSFER_FIRST} of a changed theme"] += \
                        len(trials[TRANSFER_FIRST:])
            else:
                self.given.extend(trials)

    def _in_space(self, study: PriorStudy, distributions) -> list[WarmTrial]:
        kept = []
        for trial in study.trials:
            kind = "champion" if self.source.is_champion else "study"
            key = f"{kind}:{study.id}/trial:{trial.number}"
            why = outside_space(trial.params, distributions)
            if why is None and not _finite(trial):
                why = "had no finite value"
            if why is None and key in self.seen:
                why = "given by an earlier source"
            if why is not None:
                self.reasons[why] += 1
                continue
            self.seen.add(key)
            kept.append(WarmTrial(key=key, params=_in_order(trial.params, distributions),
                                  value=float(trial.value)))
        return kept

    def carried(self) -> Carried:
        return Carried(source=self.source.name, given=len(self.given) + len(self.first),
                       skipped=sum(self.reasons.values()), transfer=self.transfer,
                       reasons=tuple(sorted(self.reasons.items())),
                       enqueued=bool(self.first) or self.source.is_champion,
                       champion=self.source.champion)


def _finite(trial: PriorTrial) -> bool:
    return isinstance(trial.value, (int, float)) and math.isfinite(trial.value)


def _in_order(params: dict[str, Any], distributions) -> dict[str, Any]:
    return {name: params[name] for name in distributions}


def give(study: optuna.Study, warm: WarmStart, distributions: dict[str, BaseDistribution]
         ) -> int:
    """Add the finished trials and enqueue the ones tried first, each once per Optuna
    study; returns how many were added now (0 when the study already holds them all)."""
    held = {t.user_attrs.get(FROM_ATTR) for t in study.get_trials(deepcopy=False)}
    added = 0
    for trial in warm.given:
        if trial.key not in held:
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=trial.value, params=trial.params,
                distributions=distributions, user_attrs={FROM_ATTR: trial.key}))
            added += 1
    for trial in warm.first:
        if trial.key not in held:
            study.enqueue_trial(trial.params, user_attrs={FROM_ATTR: trial.key})
            added += 1
    if added:
        study.set_user_attr(STUDY_ATTR, warm.records())
    return added
