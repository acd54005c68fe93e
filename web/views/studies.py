"""Studies: list, the new-study form (launch), a study's page and its live part,
cancel, and its best params (download, apply as the theme's defaults)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from data_access import selectors, services
from tuning.errors import ConfigError, ThemeError
from web import best_params, evidence, launch, optuna_dashboard, study_configs
from web.forms import (
    StudyForm,
    key_help,
    param_formset,
    rows_as_typed,
    submitted_rows,
)
from web.progress import study_progress, trial_duration
from web.views.common import study_or_404 as _study

LAUNCH_PERMISSION = "data_access.launch_study"
CANCEL_PERMISSION = "data_access.cancel_study"


def _trial_rows(trials, now):
    return [{"trial": t, "duration": trial_duration(t, now)} for t in trials]


def _live_context(study):
    now = timezone.now()
    trials = selectors.trial_list(study_id=study.id)
    return {"study": study, "trials": _trial_rows(trials, now),
            "progress": study_progress(study, trials, now),
            "param_names": [c.name for c in study.param_configs]
            or sorted({k for t in trials for k in t.params})}


@require_GET
def study_list(request):
    return render(request, "web/study_list.html", {"studies": selectors.study_list(limit=200)})


@require_GET
def study_detail(request, study_id: int):
    study = _study(study_id)
    context = _live_context(study)
    context["plot_kinds"] = _plot_links()
    context["resume_command"] = launch.resume_command(study)
    context["optuna_dashboard_url"] = optuna_dashboard.study_url(study)
    try:
        context["evidence"] = evidence.study_evidence(study)
    except evidence.UnreadableEvaluation:
        context["evidence_unreadable"] = True
    return render(request, "web/study_detail.html", context)


@require_GET
def study_live(request, study_id: int):
    """The parts of the study page that change while it runs; the page polls this."""
    study = _study(study_id)
    response = render(request, "web/_study_live.html", _live_context(study))
    response["X-Study-Active"] = "1" if study.is_active else "0"
    return response


@permission_required(LAUNCH_PERMISSION, raise_exception=True)
@require_POST
def study_resume(request, study_id: int):
    _study(study_id)
    try:
        launch.resume_study(study_id=study_id)
        messages.info(request, _("Resumed: finished trials are kept, the others continue "
                                 "from their last checkpoints."))
    except launch.LaunchError as exc:
        messages.error(request, exc.one_line())
    return redirect("study_detail", study_id=study_id)


@require_GET
def study_log(request, study_id: int):
    study = _study(study_id)
    return HttpResponse(launch.log_tail(study) or _("(no output yet)"),
                        content_type="text/plain; charset=utf-8")


def _plot_links():
    from web.plots import KINDS

    return [(slug, kind.title) for slug, kind in KINDS.items()]


def _presets():
    return {p.name: p for p in study_configs.presets(Path(settings.THEMETUNE_CONFIGS_DIR))}


def _initial(theme, preset):
    values = study_configs.initial_values(
        preset, class_count=theme.class_count if theme else None,
        theme_defaults=theme.default_params if theme else None,
        theme_name=theme.name if theme else None)
    values.update(theme=theme.id if theme else None, preset=preset.name)
    return values


def _theme_from_query(request, themes):
    theme_id = request.GET.get("theme", "")
    # 19 digits hold any SQLite id; int() refuses over 4300 of them (a 500).
    if theme_id.isdigit() and len(theme_id) <= 19:
        try:
            return selectors.theme_get(theme_id=int(theme_id))
        except ThemeError:
            return None
    return selectors.theme_get(theme_id=themes[0].id) if themes else None


def _study_new_page(request, form, formset, *, themes, selected):
    return render(request, "web/study_new.html", {
        "form": form, "formset": formset, "themes": themes, "selected_theme": selected,
        "keys": key_help(), "backend": launch.backend()})


def _with_added_row(request, form_kwargs):
    """The page again as typed, with the chosen key's new row and without the removed
    rows: "add" without JS. Nothing is checked or launched."""
    bound = StudyForm(request.POST, **form_kwargs)
    initial = {name: bound[name].data for name in bound.fields}
    rows = rows_as_typed(param_formset(request.POST))
    key = request.POST.get("add_param", "")
    if key in {k["name"] for k in key_help()}:
        rows.append(study_configs.new_row(key))
    return StudyForm(initial=initial, **form_kwargs), param_formset(initial=rows)


def _launch(form, formset) -> int | None:
    """Check the form and its rows as the CLI checks the files, and launch; None with
    each error put beside its field or row."""
    valid = form.is_valid()
    if not (formset.is_valid() and valid):
        return None
    submitted = submitted_rows(formset)
    values = {**form.config_values(), "space_rows": [row for _form, row in submitted]}
    theme_id = form.cleaned_data["theme"]
    try:
        files = study_configs.build(values, theme_id=theme_id)
        return launch.launch_new_study(theme_id=theme_id, files=files,
                                       warm_start=form.cleaned_data["warm_start"])
    except study_configs.RowErrors as exc:
        for index, message in exc.problems.items():
            submitted[index][0].add_error(None, message)
    except study_configs.FieldError as exc:
        if exc.field != "space":
            form.add_error(exc.field, exc.message)
        elif exc.row is not None:
            submitted[exc.row][0].add_error(None, exc.message)
        else:
            formset.non_form_errors().append(exc.message)
    except (launch.LaunchError, ThemeError) as exc:
        form.add_error(None, exc.one_line())
    return None


@permission_required(LAUNCH_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def study_new(request):
    themes = selectors.theme_list()
    presets = _presets()
    form_kwargs = {"themes": themes, "presets": list(presets)}
    if request.method == "POST":
        if "add_row" in request.POST:
            form, formset = _with_added_row(request, form_kwargs)
        else:
            form = StudyForm(request.POST, **form_kwargs)
            formset = param_formset(request.POST)
            study_id = _launch(form, formset)
            if study_id is not None:
                messages.success(request, _("Study %(id)s launched.") % {"id": study_id})
                return redirect("study_detail", study_id=study_id)
        selected = next((t for t in themes if str(t.id) == request.POST.get("theme")), None)
        return _study_new_page(request, form, formset, themes=themes, selected=selected)
    theme = _theme_from_query(request, themes)
    preset = presets.get(request.GET.get("preset", ""), next(iter(presets.values()), None))
    if preset is None:
        raise Http404(f"no config folder in {settings.THEMETUNE_CONFIGS_DIR}")
    try:
        initial = _initial(theme, preset)
    except ConfigError as exc:
        messages.error(request, exc.one_line())
        initial = {"theme": theme.id if theme else None, "preset": preset.name}
    formset = param_formset(initial=initial.pop("space_rows", []))
    return _study_new_page(request, StudyForm(initial=initial, **form_kwargs), formset,
                           themes=themes, selected=theme)


@permission_required(CANCEL_PERMISSION, raise_exception=True)
@require_POST
def study_cancel(request, study_id: int):
    _study(study_id)
    try:
        if launch.cancel_study(study_id=study_id):
            messages.info(request, _("Cancel requested: the study stops its trials and "
                                     "ends as killed."))
        else:
            messages.warning(request, _("The study had already ended."))
    except launch.LaunchError as exc:
        messages.error(request, exc.one_line())
    return redirect("study_detail", study_id=study_id)


@require_GET
def best_params_download(request, study_id: int):
    study = _study(study_id)
    if not study.best_params:
        raise Http404("the study has no best params yet")
    response = HttpResponse(best_params.params_yaml(study),
                            content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="params-study-{study.id}.yaml"'
    return response


@permission_required(LAUNCH_PERMISSION, raise_exception=True)
@require_POST
def best_params_apply(request, study_id: int):
    study = _study(study_id)
    if not study.best_params:
        messages.error(request, _("The study has no best params yet."))
        return redirect("study_detail", study_id=study_id)
    services.theme_set_default_params(theme_id=study.theme_id,
                                      params=best_params.nested(study.best_params),
                                      study_id=study.id)
    messages.success(request, _("Saved as the defaults of theme %(theme)s: the next study "
                                "of this theme starts from them.") % {"theme": study.theme_name})
    return redirect("study_detail", study_id=study_id)
