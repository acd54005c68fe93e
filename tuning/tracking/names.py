"""Which theme names MLflow can carry: a study logs to the experiment `<theme>` and
registers `<theme>_model`, and MLflow refuses some names only when the study ends (a
registry name with `/` or `:`), after every trial has trained. So the name is checked
when a theme is imported and again before a study starts.

Besides MLflow's own rules (mlflow.utils.validation: _validate_model_name,
_validate_experiment_name), a name must survive how it is used later: quoted in a
registry search (`name = '...'`, where a `'` ends the string) and inside a
`models:/<name>@champion` URI (where `?` and `#` start a query and a fragment).
"""

from __future__ import annotations

import posixpath
import unicodedata

from tuning.errors import ThemeError

MODEL_SUFFIX = "_model"
# MLflow's limits: the experiment name (MAX_EXPERIMENT_NAME_LENGTH), and the registered
# model's name column (256 characters in its SQL schema).
MAX_EXPERIMENT_NAME = 500
MAX_MODEL_NAME = 256
REFUSED_CHARACTERS = ("/", ":", "'", "?", "#")


def registered_model_name(theme_name: str) -> str:
    """The registry name of a theme's models."""
    return f"{theme_name}{MODEL_SUFFIX}"


def theme_name_problem(theme_name: str) -> str | None:
    """What MLflow (or a models:/ URI of it) would refuse in this theme name, as a phrase
    that completes "the theme name ..."; None when it can be used."""
    if not isinstance(theme_name, str) or not theme_name.strip():
        return "must not be empty"
    if theme_name != theme_name.strip():
        return "must not start or end with a space"
    bad = sorted({c for c in theme_name if c in REFUSED_CHARACTERS})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return (f"must not contain {shown} (MLflow's model registry refuses '/' and ':', "
                f"and a quote, '?' or '#' breaks the name inside a search or a models:/ URI)")
    if any(unicodedata.category(c).startswith("C") for c in theme_name):
        return "must not contain control or invisible format characters"
    model_name = registered_model_name(theme_name)
    normalized = posixpath.normpath(model_name)
    if normalized != model_name or normalized.startswith(".."):
        return (f"must not read as a file path that resolves elsewhere (MLflow would store "
                f"{model_name!r} as {normalized!r})")
    if len(theme_name) > MAX_EXPERIMENT_NAME:
        return f"must be at most {MAX_EXPERIMENT_NAME} characters (MLflow's experiment names)"
    if len(model_name) > MAX_MODEL_NAME:
        return (f"must be at most {MAX_MODEL_NAME - len(MODEL_SUFFIX)} characters (the "
                f"registered model {model_name[:40]!r}... is limited to {MAX_MODEL_NAME})")
    return None


def check_study_theme(theme_name: str, theme_id: int | None = None) -> None:
    """Refuse, before anything runs, a study of a theme whose name MLflow would refuse
    at the end (a theme imported before this rule, or renamed since)."""
    problem = theme_name_problem(theme_name)
    if problem is not None:
        which = f"theme {theme_name!r}" + (f" (id {theme_id})" if theme_id is not None else "")
        raise ThemeError(f"{which}: the theme name {problem}; its study could not be "
                         f"recorded in MLflow.",
                         fix="rename the theme (web admin, Themes) and launch again.")
