"""The new-study form ("tuning settings screen"): the study, the search space as a
formset of rows (prefix `params`, one row per tuned key) and the fixed parameters.

Number fields are text on the server: the config models of tuning/ judge every value,
so the form reports the same errors as the CLI (see study_configs.build)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _

from data_access import selectors
from tuning.config.params import REPORTED_METRICS, Accepts, TunableKey, tunable_keys
from tuning.config.search_space import PARAM_TYPES
from tuning.config.yaml_loader import MAX_YAML_BYTES
from tuning.states import StudyStatus
from tuning.tracking.names import theme_name_problem
from tuning.warm_start.sources import CHAMPION as WARM_CHAMPION
from web import study_configs

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
    # The common fixed parameters (study_configs.COMMON_FIELDS); params.yaml holds them.
    num_epochs = _number(_("Epochs"), _("Passes over the training split per trial."))
    image_size = _number(_("Image size (px)"), _("Images are resized to this square side."))
    channels = forms.ChoiceField(label=_("Channels"), choices=[
        ("3", _("3 (colour)")), ("1", _("1 (grayscale)"))])
    split_train = _number(_("Train share"), _("Share of source images for training."))
    split_valid = _number(_("Validation share"), _("The three shares sum to 1."))
    split_test = _number(_("Test share"), _("Held out: the figures of the chosen model."))
    seed = _number(_("Seed"), _("Seed of the split and of training."))
    equalization = forms.BooleanField(label=_("Histogram equalization"), required=False,
                                      help_text=_("Evens out the brightness of each image."))
    patch_enabled = forms.BooleanField(label=_("Patches"), required=False,
                                       help_text=_("Train on square patches of each image."))
    patch_size = _number(_("Patch size (px)"), _("At most the image size."))
    patch_stride = _number(_("Patch stride (px)"), _("Empty: the patch size."))
    pretrained = forms.BooleanField(label=_("Pretrained weights"), required=False,
                                    help_text=_("Start from torchvision's ImageNet weights "
                                                "(the local torch hub cache)."))
    base_params = _yaml(_("Other fixed parameters (base_params)"),
                        _("YAML: used by every trial; params.yaml and the fields above "
                          "override them."), rows=10)
    params = _yaml(_("params.yaml (other training parameters)"),
                   _("YAML: they override base_params; the fields above and sampled "
                     "values override them."))
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
    warm_start = forms.MultipleChoiceField(
        label=_("Start from earlier studies"), required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("launch.py --warm-start: their finished trials are given to the "
                    "searcher; the champion's parameters are tried first."))

    def __init__(self, *args, themes, presets, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["warm_start"].choices, champions = warm_start_choices()
        if self.initial.get("theme") in champions:
            self.initial.setdefault("warm_start", [WARM_CHAMPION])
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
                if name not in ("theme", "preset", "warm_start")}


def warm_start_choices() -> tuple[list[tuple[str, str]], set[int]]:
    """launch.py --warm-start's sources (the champion, each completed study), and the
    themes with a champion to preselect (a completed study registered a model)."""
    studies = [s for s in selectors.study_list() if s.status == StudyStatus.COMPLETED]
    choices = [(WARM_CHAMPION, gettext("the theme's champion"))] + [
        (f"study:{s.id}", f"{s.id}: {s.name} ({s.theme_name}, {s.metric}, "
                          f"{s.trial_count} trials)") for s in studies]
    return choices, {s.theme_id for s in studies if s.registered_model}


# ---------------------------------------------------------------- the search space rows

# tuning.config.params.PARAM_DESCRIPTIONS of the keys offered, here so that makemessages
# (which does not read tuning/) finds them; a test holds the two lists equal.
KEY_DESCRIPTIONS = (
    gettext_noop("Network architecture (torchvision ResNet)."),
    gettext_noop("A local state_dict file to start from."),
    gettext_noop("Start from torchvision's ImageNet weights (local torch hub cache)."),
    gettext_noop("Train only the classifier; the backbone stays as loaded."),
    gettext_noop("Optimizer step size."),
    gettext_noop("Images per training batch."),
    gettext_noop("Optimizer."),
    gettext_noop("Passes over the training split."),
    gettext_noop("Data loader worker processes (streaming data)."),
    gettext_noop("SGD momentum."),
    gettext_noop("L2 penalty on the weights."),
    gettext_noop("At most this many batches per epoch; empty: the whole split."),
    gettext_noop("Share of source images in the training split."),
    gettext_noop("Share of source images in the validation split."),
    gettext_noop("Share of source images in the test split."),
    gettext_noop("Seed of the split and of training."),
    gettext_noop("Side of the square input image, in pixels."),
    gettext_noop("1 (grayscale) or 3 (colour) input channels."),
    gettext_noop("Skip images that cannot be decoded instead of failing."),
    gettext_noop("Keep decoded images in memory (resident) or stream shards; auto picks."),
    gettext_noop("Histogram equalization of each image."),
    gettext_noop("Brightness correction method."),
    gettext_noop("Train on square patches cut from each image."),
    gettext_noop("Patch side in pixels, at most the image size."),
    gettext_noop("Step between patches in pixels; empty: the patch size."),
)


def _bound(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def accepts_text(accepts: Accepts) -> str:
    """What a key accepts, in the reader's language: its values, or its range."""
    if accepts.kind in ("choices", "bool"):
        text = ", ".join(study_configs.format_choices(list(accepts.choices)).splitlines())
    elif accepts.kind == "text":
        text = gettext("text")
    else:
        kind = gettext("integer") if accepts.kind == "int" else gettext("number")
        low, high = accepts.low, accepts.high
        if low is not None and high is not None:
            text = (f"{kind} {_bound(low)} {'<' if accepts.low_open else '≤'} x "
                    f"{'<' if accepts.high_open else '≤'} {_bound(high)}")
        elif low is not None:
            text = f"{kind} x {'>' if accepts.low_open else '≥'} {_bound(low)}"
        elif high is not None:
            text = f"{kind} x {'<' if accepts.high_open else '≤'} {_bound(high)}"
        else:
            text = kind
    return f"{text}, {gettext('or null')}" if accepts.optional else text


def key_help() -> list[dict]:
    """The keys a row may tune, each with its description, what it accepts and the row
    that choosing it starts (for the add-row control and the key list)."""
    return [{"name": key.name, "description": gettext(key.description),
             "accepts": accepts_text(key.accepts), "row": study_configs.new_row(key.name)}
            for key in tunable_keys()]


class KeySelect(forms.Select):
    """The tunable keys, plus the row's own value when it is none of them: an unknown
    key is shown as typed, and the CLI's check says what is wrong with it."""

    def optgroups(self, name, value, attrs=None):
        known = {str(choice) for choice, _label in self.choices}
        extra = [(v, v) for v in value if v and v not in known]
        if extra:
            self.choices = [*self.choices, *extra]
        return super().optgroups(name, value, attrs)


def _key_choices(keys: list[TunableKey]) -> list[tuple[str, str]]:
    return [("", "—")] + [(k.name, k.name) for k in keys]


class ParamRowForm(forms.Form):
    """One tuned key. Every field is text: the CLI's rules judge the row (row_spec)."""

    name = forms.CharField(label=_("Parameter"), required=False, max_length=200,
                           widget=KeySelect(attrs={"class": "param-name"}))
    type = forms.CharField(label=_("Type"), required=False, max_length=20, initial="float",
                           widget=forms.Select(choices=[(t, t) for t in PARAM_TYPES],
                                               attrs={"class": "param-type"}))
    low = _number(_("Low"))
    high = _number(_("High"))
    log = forms.BooleanField(label=_("Log scale"), required=False)
    step = _number(_("Step"))
    choices = forms.CharField(
        label=_("Choices"), required=False, max_length=MAX_YAML_BYTES,
        help_text=_("One per line, or separated by commas; quote text that holds a comma."),
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false",
                                     "class": "param-choices"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["name"].widget.choices = _key_choices(tunable_keys())

    def row(self) -> dict:
        """The row's values as study_configs reads them."""
        return {name: self.cleaned_data.get(name) for name in study_configs.ROW_FIELDS}


# Each key appears once (a repeated one is a row error), so more rows than keys is a
# mistake; the bound also caps what a forged management form makes the server build.
MAX_ROWS = 100
ParamFormSet = forms.formset_factory(ParamRowForm, extra=1, can_delete=True,
                                     validate_max=True, max_num=MAX_ROWS,
                                     absolute_max=MAX_ROWS)
SPACE_PREFIX = "params"


def param_formset(data=None, *, initial=None) -> forms.BaseFormSet:
    return ParamFormSet(data, initial=initial, prefix=SPACE_PREFIX)


def submitted_rows(formset: forms.BaseFormSet) -> list[tuple[ParamRowForm, dict]]:
    """The rows that say something, with their forms (for errors): neither removed nor
    left blank. Call after formset.is_valid()."""
    return [(form, form.row()) for form in formset.forms
            if form.has_changed() and not form.cleaned_data.get("DELETE")]


def rows_as_typed(formset: forms.BaseFormSet) -> list[dict]:
    """The bound formset's rows as initial values, the removed and blank ones left out
    (the form without JS: "add a row" shows the page again with them)."""
    rows = []
    for form in formset.forms:
        row = {name: form[name].data for name in (*study_configs.ROW_FIELDS, "DELETE")}
        blank = not (row["name"] or row["low"] or row["high"] or row["choices"])
        if not row.pop("DELETE") and not blank:
            rows.append(row)
    return rows
