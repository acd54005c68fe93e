"""What `--warm-start` names, and the earlier studies it reads, as plain data.

A source is `champion` (the theme's current champion's parameters, tried first),
`study:<id>` (the finished trials of one recorded study) or `theme` (every finished
study of the theme). launch.py reads them from the database and the registry; the
checks here refuse what no study could start from, before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tuning.errors import ConfigError, StudyNotFoundError

CHAMPION = "champion"
THEME = "theme"
STUDY_PREFIX = "study:"
OPTION = "--warm-start"
# SageMaker's warm start takes up to 5 parent jobs; a few more cost nothing here.
MAX_SOURCES = 10
_STUDY_SOURCE = re.compile(r"study:(\d{1,18})")


@dataclass(frozen=True)
class PriorTrial:
    number: int
    params: dict[str, Any]       # dotted name -> value, as the trial was given them
    value: float                 # on its study's metric


@dataclass(frozen=True)
class PriorStudy:
    id: int
    theme_id: int
    metric: str
    direction: str               # "maximize" | "minimize"
    # tuning.data.keys.theme_content_hash when it ran; "" for a study recorded before
    # the hash was (counted as a changed theme).
    theme_content_hash: str
    trials: tuple[PriorTrial, ...]    # its COMPLETE trials that have a value
    best_trial_number: int | None = None


@dataclass(frozen=True)
class Source:
    """One `--warm-start` name, read: the studies it stands for."""
    name: str                                 # "champion", "study:12", "theme"
    studies: tuple[PriorStudy, ...]
    # For `champion`: the registered version, e.g. "digits_model version 3".
    champion: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_champion(self) -> bool:
        return self.name == CHAMPION


def parse_sources(text: str) -> tuple[str, ...]:
    """`champion,study:12,theme` -> its names, each once; ValueError says what is wrong
    (argparse turns it into launch.py's one-line error)."""
    names = tuple(part.strip() for part in text.split(","))
    if not any(names):
        raise ValueError(f"name at least one source: {CHAMPION}, {STUDY_PREFIX}<id> or {THEME}")
    for name in names:
        if name not in (CHAMPION, THEME) and not _STUDY_SOURCE.fullmatch(name):
            raise ValueError(f"unknown source {name[:40]!r}: use {CHAMPION}, "
                             f"{STUDY_PREFIX}<id> (a study's number) or {THEME}")
    if len(set(names)) != len(names):
        raise ValueError("a source is named twice")
    if len(names) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources (got {len(names)})")
    return names


def study_id(name: str) -> int:
    return int(name[len(STUDY_PREFIX):])


def unknown_study(name: str, where: str) -> StudyNotFoundError:
    return StudyNotFoundError(f"{name} is not a study in database {where}.", key=OPTION,
                              fix="name a study listed by the web UI's studies page, "
                                  "or use `theme`.")


def check_source(source: Source, *, theme_id: int, theme_name: str, metric: str,
                 direction: str) -> None:
    """Refuse a source no study can start from: another theme's study, a study chosen
    on another metric or direction, or a source without one finished trial."""
    for study in source.studies:
        if source.is_champion or source.name == THEME:
            continue   # the champion is only tried first; `theme` skips such studies
        if study.theme_id != theme_id:
            raise ConfigError(f"{source.name} tuned theme {study.theme_id}, not theme "
                              f"{theme_id} ('{theme_name}').", key=OPTION,
                              fix=f"name a study of theme {theme_id}, or use `{THEME}`.")
        if (study.metric, study.direction) != (metric, direction):
            raise ConfigError(
                f"{source.name} chose its trials on {study.direction} {study.metric}, this "
                f"study on {direction} {metric}: its values mean something else.",
                key=OPTION, fix=f"name a study on {metric}, or set study.metric to "
                                f"{study.metric}.")
    usable = [s for s in source.studies if source.name != THEME
              or (s.metric, s.direction) == (metric, direction)]
    if not any(study.trials for study in usable):
        raise ConfigError(f"{source.name} has no finished trial to start from.", key=OPTION,
                          fix=_empty_fix(source))


def _empty_fix(source: Source) -> str:
    if source.name == THEME:
        return "run a first study of the theme without --warm-start."
    return f"drop {source.name} from {OPTION}, or name a study that finished trials."
