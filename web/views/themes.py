"""Themes: the list, one theme's classes and sample thumbnails, one image."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from data_access import selectors
from tuning.errors import ConfigError, ThemeError
from web import study_configs, try_model

THUMBNAILS_PER_CLASS = 8


@require_GET
def theme_list(request):
    return render(request, "web/theme_list.html", {"themes": selectors.theme_list()})


@require_GET
def theme_detail(request, theme_id: int):
    try:
        theme = selectors.theme_get(theme_id=theme_id)
    except ThemeError as exc:
        raise Http404(exc.one_line()) from exc
    samples = selectors.theme_sample_images(theme_id=theme_id, per_class=THUMBNAILS_PER_CLASS)
    by_class: dict[str, list] = {}
    for ref in samples:
        by_class.setdefault(ref.label, []).append(ref)
    studies = selectors.study_list_for_theme(theme_id=theme_id)
    space_study = next((s for s in studies if s.param_configs), None)
    return render(request, "web/theme_detail.html", {
        "theme": theme,
        "classes": [(label, count, by_class.get(label, [])) for label, count in theme.class_counts],
        "studies": studies,
        "space_rows": space_study.param_configs if space_study else _default_space(),
        "space_study_id": space_study.id if space_study else None,
        # The form to try the champion, once a completed study has registered one.
        "try_model": (try_model.form_context(theme.name)
                      if try_model.newest_completed(studies) else None),
    })


def _default_space():
    """The search space a new study starts from: that of configs/ itself."""
    folder = Path(settings.THEMETUNE_CONFIGS_DIR)
    preset = next(iter(study_configs.presets(folder)), None) if folder.is_dir() else None
    try:
        return study_configs.preset_space(preset) if preset else ()
    except ConfigError:
        return ()


@require_GET
def theme_image(request, theme_id: int, image_id: int):
    # The file is looked up by id; no part of the request becomes part of a path.
    path = selectors.theme_image_file(theme_id=theme_id, image_id=image_id)
    if path is None:
        raise Http404("no such image")
    try:
        response = FileResponse(open(path, "rb"))
    except FileNotFoundError as exc:
        raise Http404("image file missing") from exc
    response["Cache-Control"] = "private, max-age=3600"
    return response
