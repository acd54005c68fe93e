"""Reads. Every function takes keyword-only arguments and returns plain data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Count

from data_access.db import database_description, database_errors_as_user_errors
from data_access.models import Theme, ThemeImage, TuningParamConfig, TuningStudy, TuningTrial
from tuning.data.theme import Sample, ThemeSpec
from tuning.errors import StudyNotFoundError, ThemeError
from tuning.redact import redact_text
from tuning.states import ACTIVE_STATUSES, StudyStatus, TrialState
from tuning.warm_start.sources import PriorStudy, PriorTrial

__all__ = [
    "ParamConfigInfo",
    "StudyInfo",
    "ThemeSummary",
    "TrialInfo",
    "database_description",
    "ImageRef",
    "ThemeDetail",
    "study_get",
    "study_list",
    "study_list_active",
    "study_list_for_theme",
    "study_require",
    "theme_find_id",
    "theme_get",
    "theme_get_spec",
    "theme_image_file",
    "theme_image_ids_by_path",
    "theme_list",
    "theme_not_found",
    "theme_sample_images",
    "trial_list",
    "warm_start_champion_study",
    "warm_start_study",
    "warm_start_theme_studies",
]

THEME_LIST_FIX = (
    "list themes with `python manage.py list_themes` or import one with "
    "`python manage.py import_theme DIR --name NAME`."
)


def theme_not_found(theme_id: int) -> ThemeError:
    """The error for a theme id that no row has, as the CLI and the web UI show it."""
    return ThemeError(f"Theme {theme_id} not found in database {database_description()}.",
                      fix=THEME_LIST_FIX)


@dataclass(frozen=True)
class ThemeSummary:
    id: int
    name: str
    description: str
    image_count: int
    class_count: int
    created_at: datetime


@dataclass(frozen=True)
class ParamConfigInfo:
    name: str
    type: str
    low: float | None
    high: float | None
    log: bool
    step: float | None
    choices: list[Any] | None


@dataclass(frozen=True)
class StudyInfo:
    id: int
    theme_id: int
    theme_name: str
    name: str
    status: str
    direction: str
    metric: str
    n_trials: int
    resolved_config: dict[str, Any]
    optuna_study_name: str
    optuna_storage: str
    mlflow_experiment_id: str
    mlflow_parent_run_id: str
    ray_job_id: str
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial_number: int | None
    registered_model: str
    registered_version: str
    error: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    trial_count: int
    param_configs: tuple[ParamConfigInfo, ...]
    # How the web UI launched it; empty/None for a study started from the CLI.
    launcher: str = ""
    process_id: int | None = None
    process_start: str = ""
    run_dir: str = ""
    cancel_requested_at: datetime | None = None
    experiment_path: str = ""   # Tune's experiment, for `launch.py --resume`
    # tuning.tracking.recording.StudyEvaluation as JSON; None until the study has one.
    evaluation: dict[str, Any] | None = None

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class TrialInfo:
    id: int
    study_id: int
    number: int
    state: str
    params: dict[str, Any]
    metrics: list[dict[str, Any]]
    value: float | None
    mlflow_run_id: str
    ray_trial_id: str
    node: str
    error: str
    started_at: datetime | None
    ended_at: datetime | None


def theme_get_spec(*, theme_id: int) -> ThemeSpec:
    """The frozen description of a theme that tuning/ trains on.

    Raises ThemeError when the theme is missing or empty, or when the database cannot
    be used (unreachable, not migrated)."""
    with database_errors_as_user_errors():
        theme = Theme.objects.filter(pk=theme_id).first()
        if theme is None:
            raise theme_not_found(theme_id)
        rows = list(theme.images.order_by("id").values_list("image", "label"))
    if not rows:
        raise ThemeError(
            f"Theme {theme_id} ('{theme.name}') has no images.",
            fix="import images with `python manage.py import_theme DIR --name NAME`.",
        )
    media_root = os.path.abspath(settings.MEDIA_ROOT)
    class_names = tuple(sorted({label for _, label in rows}))
    index = {name: i for i, name in enumerate(class_names)}
    # Built from MEDIA_ROOT rather than FieldFile.path so that the paths match
    # media_root character for character (tuning/ refuses paths outside it).
    samples = tuple(
        Sample(path=os.path.join(media_root, name), label=index[label]) for name, label in rows
    )
    return ThemeSpec(
        id=theme.id,
        name=theme.name,
        class_names=class_names,
        samples=samples,
        media_root=media_root,
    )


def theme_list() -> list[ThemeSummary]:
    """All themes, oldest first, with image and class counts."""
    with database_errors_as_user_errors():
        themes = Theme.objects.annotate(
            image_count=Count("images"),
            class_count=Count("images__label", distinct=True),
        ).order_by("id")
        return [
            ThemeSummary(
                id=t.id,
                name=t.name,
                description=t.description,
                image_count=t.image_count,
                class_count=t.class_count,
                created_at=t.created_at,
            )
            for t in themes
        ]


def _param_info(config: TuningParamConfig) -> ParamConfigInfo:
    return ParamConfigInfo(
        name=config.name,
        type=config.type,
        low=config.low,
        high=config.high,
        log=config.log,
        step=config.step,
        choices=config.choices,
    )


def _study_info(study: TuningStudy) -> StudyInfo:
    return StudyInfo(
        id=study.id,
        theme_id=study.theme_id,
        theme_name=study.theme.name,
        name=study.name,
        status=study.status,
        direction=study.direction,
        metric=study.metric,
        n_trials=study.n_trials,
        resolved_config=study.resolved_config,
        optuna_study_name=study.optuna_study_name,
        optuna_storage=study.optuna_storage,
        mlflow_experiment_id=study.mlflow_experiment_id,
        mlflow_parent_run_id=study.mlflow_parent_run_id,
        ray_job_id=study.ray_job_id,
        best_value=study.best_value,
        best_params=study.best_params,
        best_trial_number=study.best_trial_number,
        registered_model=study.registered_model,
        registered_version=study.registered_version,
        error=redact_text(study.error),   # shown on pages: driver text may quote a URL
        created_at=study.created_at,
        started_at=study.started_at,
        ended_at=study.ended_at,
        trial_count=study.trial_count,
        param_configs=tuple(_param_info(c) for c in study.param_configs.all()),
        launcher=study.launcher,
        process_id=study.process_id,
        process_start=study.process_start,
        run_dir=study.run_dir,
        cancel_requested_at=study.cancel_requested_at,
        experiment_path=study.experiment_path,
        evaluation=study.evaluation,
    )


def _studies():
    return (
        TuningStudy.objects.select_related("theme")
        .prefetch_related("param_configs")
        .annotate(trial_count=Count("trials"))
    )


def study_get(*, study_id: int) -> StudyInfo:
    study = _studies().filter(pk=study_id).first()
    if study is None:
        raise StudyNotFoundError(
            f"Study {study_id} not found in database {database_description()}."
        )
    return _study_info(study)


def study_require(*, study_id: int) -> None:
    """The study row that launch.py --record-id fills in exists (checked before the dry
    run ends, so that the real run cannot fail on it after Ray and MLflow started)."""
    with database_errors_as_user_errors():
        found = TuningStudy.objects.filter(pk=study_id).exists()
    if not found:
        raise StudyNotFoundError(
            f"Study {study_id} not found in database {database_description()}.",
            key="--record-id",
            fix="launch without --record-id, or create the study in the web UI.")


def study_list_for_theme(*, theme_id: int) -> list[StudyInfo]:
    """The theme's studies, newest first."""
    return [_study_info(s) for s in _studies().filter(theme_id=theme_id).order_by("-id")]


def trial_list(*, study_id: int) -> list[TrialInfo]:
    """The study's trials in Optuna's order."""
    return [
        TrialInfo(
            id=t.id,
            study_id=t.study_id,
            number=t.number,
            state=t.state,
            params=t.params,
            metrics=t.metrics,
            value=t.value,
            mlflow_run_id=t.mlflow_run_id,
            ray_trial_id=t.ray_trial_id,
            node=t.node,
            error=redact_text(t.error),
            started_at=t.started_at,
            ended_at=t.ended_at,
        )
        for t in TuningTrial.objects.filter(study_id=study_id).order_by("number")
    ]


def _prior_study(study: TuningStudy) -> PriorStudy:
    rows = (TuningTrial.objects.filter(study_id=study.id, state=TrialState.COMPLETE,
                                       value__isnull=False)
            .order_by("number").values_list("number", "params", "value"))
    return PriorStudy(id=study.id, theme_id=study.theme_id, metric=study.metric,
                      direction=study.direction, theme_content_hash=study.theme_content_hash,
                      trials=tuple(PriorTrial(number=n, params=p or {}, value=v)
                                   for n, p, v in rows),
                      best_trial_number=study.best_trial_number)


def warm_start_study(*, study_id: int) -> PriorStudy | None:
    """A recorded study's finished trials, for `launch.py --warm-start study:<id>`."""
    with database_errors_as_user_errors():
        study = TuningStudy.objects.filter(pk=study_id).first()
        return _prior_study(study) if study is not None else None


def warm_start_theme_studies(*, theme_id: int, exclude_id: int | None = None
                             ) -> list[PriorStudy]:
    """Every completed study of the theme, oldest first (`--warm-start theme`)."""
    with database_errors_as_user_errors():
        studies = (TuningStudy.objects.filter(theme_id=theme_id, status=StudyStatus.COMPLETED)
                   .exclude(pk=exclude_id).order_by("id"))
        return [_prior_study(s) for s in studies]


def warm_start_champion_study(*, model_name: str, version: str, run_id: str
                              ) -> PriorStudy | None:
    """The study that registered a model version (the champion), with only its best
    trial; matched by the recorded version, else by the MLflow run the version came from."""
    with database_errors_as_user_errors():
        study = (TuningStudy.objects.filter(registered_model=model_name,
                                            registered_version=version).order_by("-id").first()
                 or (TuningStudy.objects.filter(mlflow_parent_run_id=run_id).order_by("-id")
                     .first() if run_id else None))
        if study is None or study.best_params is None or study.best_value is None:
            return None
        best = PriorTrial(number=study.best_trial_number or 0, params=study.best_params,
                          value=study.best_value)
        return PriorStudy(id=study.id, theme_id=study.theme_id, metric=study.metric,
                          direction=study.direction,
                          theme_content_hash=study.theme_content_hash, trials=(best,),
                          best_trial_number=study.best_trial_number)


def theme_find_id(*, name: str) -> int | None:
    """The id of the theme with this name, or None."""
    with database_errors_as_user_errors():
        return Theme.objects.filter(name=name).values_list("id", flat=True).first()


# ---------------------------------------------------------------- for the web UI


@dataclass(frozen=True)
class ThemeDetail:
    id: int
    name: str
    description: str
    image_count: int
    class_counts: tuple[tuple[str, int], ...]   # (label, images), sorted by label
    default_params: dict[str, Any]
    default_params_study_id: int | None
    created_at: datetime

    @property
    def class_count(self) -> int:
        return len(self.class_counts)


@dataclass(frozen=True)
class ImageRef:
    id: int
    theme_id: int
    label: str


def theme_get(*, theme_id: int) -> ThemeDetail:
    """One theme with its images counted per class. Raises ThemeError when missing."""
    with database_errors_as_user_errors():
        theme = Theme.objects.filter(pk=theme_id).first()
        if theme is None:
            raise theme_not_found(theme_id)
        counts = tuple(
            (row["label"], row["n"])
            for row in theme.images.values("label").annotate(n=Count("id")).order_by("label")
        )
    return ThemeDetail(
        id=theme.id, name=theme.name, description=theme.description,
        image_count=sum(n for _, n in counts), class_counts=counts,
        default_params=theme.default_params or {},
        default_params_study_id=theme.default_params_study_id, created_at=theme.created_at,
    )


def theme_sample_images(*, theme_id: int, per_class: int) -> list[ImageRef]:
    """The first `per_class` images of each class, for thumbnails."""
    refs: list[ImageRef] = []
    labels = (ThemeImage.objects.filter(theme_id=theme_id).values_list("label", flat=True)
              .distinct().order_by("label"))
    for label in labels:
        ids = (ThemeImage.objects.filter(theme_id=theme_id, label=label).order_by("id")
               .values_list("id", flat=True)[:per_class])
        refs.extend(ImageRef(id=i, theme_id=theme_id, label=label) for i in ids)
    return refs


def theme_image_file(*, theme_id: int, image_id: int) -> str | None:
    """The absolute path of one image of the theme, or None when there is no such
    image. The path comes from the database row, never from the request."""
    name = (ThemeImage.objects.filter(pk=image_id, theme_id=theme_id)
            .values_list("image", flat=True).first())
    if not name:
        return None
    media_root = os.path.abspath(settings.MEDIA_ROOT)
    path = os.path.abspath(os.path.join(media_root, name))
    # A row edited by hand to "../x" must not reach outside MEDIA_ROOT either.
    if os.path.commonpath([media_root, path]) != media_root:
        return None
    return path


def theme_image_ids_by_path(*, theme_id: int, paths: list[str]) -> dict[str, int]:
    """The ids of the theme's images at these absolute paths (as a ThemeSpec gives
    them); a path outside MEDIA_ROOT or of no image of this theme is left out."""
    media_root = os.path.abspath(settings.MEDIA_ROOT)
    names: dict[str, str] = {}
    for path in paths:
        absolute = os.path.abspath(path)
        # PostgreSQL refuses a NUL in a query: such a path (a hand-edited row) is no image.
        if "\x00" not in path and os.path.commonpath([media_root, absolute]) == media_root:
            names[os.path.relpath(absolute, media_root).replace(os.sep, "/")] = path
    rows = (ThemeImage.objects.filter(theme_id=theme_id, image__in=list(names))
            .values_list("image", "id"))
    return {names[name]: image_id for name, image_id in rows}


def study_list(*, limit: int | None = None) -> list[StudyInfo]:
    """Every study, newest first."""
    studies = _studies().order_by("-id")
    if limit is not None:
        studies = studies[:limit]
    return [_study_info(s) for s in studies]


def study_list_active() -> list[StudyInfo]:
    """Studies not yet ended (pending or running), oldest first."""
    return [_study_info(s)
            for s in _studies().filter(status__in=ACTIVE_STATUSES).order_by("id")]
