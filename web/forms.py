"""The new-study form ("tuning settings screen").

Number fields are text on the server: the config models of tuning/ judge every value,
so the form reports the same errors as the CLI (see study_configs.build)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from tuning.config.params import REPORTED_METRICS
from tuning.config.yaml_loader import MAX_YAML_BYTES
from tuning.tracking.names import theme_name_problem

_NUMBER = {"inputmode": "decimal", "class": "num"}
_YAML = {"rows": 8, "spellcheck": "false", "class": "yaml"}
# Longer is no number a study can use; the config models judge the range.
NUMBER_MAX_CHARS = 40


def _number(label, help_text="", required=False):
    return forms.CharField(label=label, help_text=help_text, required=required,
                           max_length=NUMBER_MAX_CHARS, widget=forms.TextInput(attrs=_NUMBER))


def _yaml(label, help_text="", rows=8):
    # The bound of a config file: each text area becomes (part of) one.
    return forms.CharField(label=label, help_text=help_text, required=False,
                           max_length=MAX_YAML_BYTES,
                           widget=forms.Textarea(attrs={**_YAML, "rows": rows}))


class StudyForm(forms.Form):
    theme = forms.TypedChoiceField(label=_("Theme"), coerce=int)
    preset = forms.ChoiceField(label=_("Start from"), required=False,
                               help_text=_("A folder of configs/ whose files fill this form."))
    study_name = forms.CharField(label=_("Study name"), max_length=200, required=False,
                                 help_text=_("Optuna study name (study.name)."))
    direction = forms.ChoiceField(label=_("Direction"), choices=[
        ("maximize", _("maximize")), ("minimize", _("minimize"))])
    metric = forms.ChoiceField(label=_("Metric"),
                               choices=[(m, m) for m in REPORTED_METRICS])
    n_trials = _number(_("Trials"), _("Number of trials (study.n_trials)."), required=True)
    timeout = _number(_("Timeout (s)"), _("Time budget in seconds; empty: none."))
    space = _yaml(_("Search space"), _("params_to_tune: one entry per parameter, with "
                                       "type float, int or categorical."), rows=14)
    base_params = _yaml(_("Fixed parameters"), _("base_params: used by every trial; "
                                                 "params.yaml overrides them."), rows=14)
    params = _yaml(_("params.yaml"), _("Training parameters; they override the fixed "
                                       "parameters, and sampled values override them."))
    cpu = _number(_("CPUs per trial"))
    gpu = _number(_("GPUs per trial"), _("Fractions share a GPU, e.g. 0.25."))
    max_concurrent_trials = _number(_("Trials at once"))
    scheduler = forms.ChoiceField(label=_("Scheduler"), choices=[
        ("none", _("none")), ("asha", _("ASHA (stops poor trials early)"))])
    grace_period = _number(_("Grace period (epochs)"),
                           _("ASHA: epochs every trial runs before it may be stopped."))
    config = _yaml(_("config.yaml (other settings)"),
                   _("MLflow, Ray, checkpoints, failures, cache folder."), rows=10)
    augments = _yaml(_("augments.yaml"), _("Augmentations of training batches."), rows=7)

    def __init__(self, *args, themes, presets, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["theme"].choices = [(t.id, f"{t.name} (id {t.id})") for t in themes]
        self.fields["preset"].choices = [(p, p) for p in presets]
        self._theme_names = {t.id: t.name for t in themes}

    def clean_theme(self):
        # A theme imported before the name rule would train every trial and then fail to
        # register its model: refused here, before a study record exists.
        theme_id = self.cleaned_data["theme"]
        problem = theme_name_problem(self._theme_names.get(theme_id, ""))
        if problem is not None:
            raise forms.ValidationError(
                _("The theme name %(problem)s; rename the theme (admin, Themes) first."),
                params={"problem": problem}, code="theme_name")
        return theme_id

    def config_values(self) -> dict[str, str]:
        """The values that become the four YAML files."""
        return {name: value for name, value in self.cleaned_data.items()
                if name not in ("theme", "preset")}
