"""Try the model: label uploaded images with a theme's champion (web/try_model.py does
the work). The GET shows the champion and the form; the POST predicts and changes
nothing, in MLflow or in the database."""

from __future__ import annotations

import functools

from django.contrib.auth.decorators import permission_required
from django.http import Http404
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from data_access import selectors
from tuning.errors import ThemeError
from web import try_model
from web.views.common import study_or_404


def _uploads_limited(view):
    """CsrfViewMiddleware reads the body before a view runs, too early to bound the
    uploads; so, as Django's docs show, the CSRF check moves into the view, after
    try_model's upload limits are in place. It is still made on every request."""
    protected = csrf_protect(view)

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        limits = try_model.limit_uploads(request) if request.method == "POST" else None
        return protected(request, *args, limits=limits, **kwargs)
    return wrapper


@permission_required(try_model.PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
@_uploads_limited
def theme_try_model(request, theme_id: int, *, limits):
    try:
        theme = selectors.theme_get(theme_id=theme_id)
    except ThemeError as exc:
        raise Http404(exc.one_line()) from exc
    studies = selectors.study_list_for_theme(theme_id=theme_id)
    return _page(request, limits, theme_id=theme.id, theme_name=theme.name, study=None,
                 tracking_uri=try_model.theme_tracking_uri(studies))


@permission_required(try_model.PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
@_uploads_limited
def study_try_model(request, study_id: int, *, limits):
    study = study_or_404(study_id)
    return _page(request, limits, theme_id=study.theme_id, theme_name=study.theme_name,
                 study=study, tracking_uri=try_model.study_tracking_uri(study))


def _page(request, limits, *, theme_id, theme_name, study, tracking_uri):
    context = {"theme_id": theme_id, "theme_name": theme_name, "study": study,
               "store": try_model.shown_uri(tracking_uri), "champion": None,
               "try_model": try_model.form_context(theme_name)}
    try:
        context["champion"] = champion = try_model.find_champion(
            tracking_uri=tracking_uri, theme_name=theme_name)
        if champion is not None and limits is not None:
            context.update(_predictions(request, limits, champion))
    except try_model.TryModelError as exc:
        context["error"] = exc.one_line()
    return render(request, "web/try_model.html", context)


def _predictions(request, limits, champion) -> dict:
    files = try_model.uploads(request, limits)
    if not files:
        return {"error": _("Choose one or more image files.")}
    result = {"predictions": try_model.predict(champion, files)}
    if limits.too_many:
        result["warning"] = _("At most %(n)s images at a time: the first %(n)s are "
                              "labelled, the others were not read.") % {"n": try_model.MAX_FILES}
    return result
