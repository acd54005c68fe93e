"""Themes (labelled image sets) and the tuning studies run on them."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from tuning.states import StudyStatus, TrialState
from tuning.tracking.names import theme_name_problem


def validate_theme_name(name: str) -> None:
    """A name MLflow would refuse at the end of a study is refused in the admin too."""
    problem = theme_name_problem(name)
    if problem is not None:
        raise ValidationError(f"The theme name {problem}.", code="theme_name")


def _choices(qualname: str, states: type[StudyStatus | TrialState]) -> type[models.TextChoices]:
    """Django's choices for one of tuning.states' enums: the same values, so that the
    database, the driver and the web UI share one vocabulary."""
    return models.TextChoices(qualname.rsplit(".", 1)[-1],
                              [(member.name, member.value) for member in states],
                              module=__name__, qualname=qualname)


class Theme(models.Model):
    name = models.CharField(max_length=200, unique=True, validators=[validate_theme_name])
    description = models.TextField(blank=True)
    # params.yaml values (nested, as in the file) that prefill the next study of this
    # theme: the original system's "apply best params".
    default_params = models.JSONField(default=dict, blank=True)
    default_params_study_id = models.IntegerField(
        null=True, blank=True, help_text="The study whose best params these are.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} (id {self.id})"


def theme_image_upload_to(instance: ThemeImage, filename: str) -> str:
    # Keyed by id, not name: a theme can be renamed without moving its files.
    return f"themes/{instance.theme_id}/{instance.label}/{filename}"


class ThemeImage(models.Model):
    theme = models.ForeignKey(Theme, on_delete=models.CASCADE, related_name="images")
    # Stored relative to MEDIA_ROOT, so the folder can move with only the setting changed.
    image = models.ImageField(upload_to=theme_image_upload_to, max_length=500)
    label = models.CharField(max_length=200, db_index=True, help_text="Class name.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.label}: {self.image.name}"


class TuningStudy(models.Model):
    Status = _choices("TuningStudy.Status", StudyStatus)

    class Direction(models.TextChoices):
        MAXIMIZE = "maximize"
        MINIMIZE = "minimize"

    class Launcher(models.TextChoices):
        NONE = "", "command line"
        LOCAL = "local", "local process"
        RAY_JOB = "ray", "Ray job"

    # PROTECT: deleting a theme must not silently erase the record of its studies.
    theme = models.ForeignKey(Theme, on_delete=models.PROTECT, related_name="studies")
    name = models.CharField(max_length=200)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    direction = models.CharField(max_length=8, choices=Direction.choices)
    metric = models.CharField(max_length=100)
    n_trials = models.PositiveIntegerField()
    resolved_config = models.JSONField(default=dict)
    optuna_study_name = models.CharField(max_length=200)
    # Stored without a password (tuning.redact.redact_url).
    optuna_storage = models.CharField(max_length=500, blank=True)
    mlflow_experiment_id = models.CharField(max_length=64, blank=True)
    mlflow_parent_run_id = models.CharField(max_length=64, blank=True)
    ray_job_id = models.CharField(max_length=200, blank=True)
    experiment_path = models.CharField(
        max_length=1000, blank=True,
        help_text="Tune's experiment folder or URI: `launch.py --resume` continues it.")
    best_value = models.FloatField(null=True, blank=True)
    best_params = models.JSONField(null=True, blank=True)
    best_trial_number = models.IntegerField(null=True, blank=True)
    registered_model = models.CharField(max_length=200, blank=True)
    registered_version = models.CharField(max_length=50, blank=True)
    # Which images and labels the study saw (tuning.data.keys.theme_content_hash): a
    # later study tells from it whether the theme changed since.
    theme_content_hash = models.CharField(max_length=64, blank=True)
    warm_start = models.JSONField(
        null=True, blank=True, help_text="The earlier trials the searcher started from.")
    # tuning.tracking.recording.StudyEvaluation as JSON: the chosen model on the test split.
    evaluation = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # How the web UI started the study, to follow and stop it. Empty for a study
    # started from the command line.
    launcher = models.CharField(max_length=8, choices=Launcher.choices, blank=True)
    process_id = models.IntegerField(null=True, blank=True)
    # The process's start time (Linux clock ticks since boot): tells our process from
    # a later one that got the same pid.
    process_start = models.CharField(max_length=32, blank=True)
    run_dir = models.CharField(max_length=500, blank=True,
                               help_text="Folder with the study's config files and log.")
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "tuning studies"
        permissions = [
            ("launch_study", "Can launch tuning studies"),
            ("cancel_study", "Can cancel tuning studies"),
            # Runs the theme's registered champion on uploaded images in the web
            # server's process: reads MLflow, writes nothing, but costs CPU and memory.
            ("try_model", "Can try a theme's champion model on uploaded images"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (id {self.id}, {self.status})"


class TuningTrial(models.Model):
    # Optuna's state names, so that the two records read alike.
    State = _choices("TuningTrial.State", TrialState)

    study = models.ForeignKey(TuningStudy, on_delete=models.CASCADE, related_name="trials")
    number = models.PositiveIntegerField(help_text="Optuna's trial number.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    params = models.JSONField(default=dict)
    metrics = models.JSONField(default=list, help_text="One dict per reported epoch.")
    value = models.FloatField(null=True, blank=True)
    mlflow_run_id = models.CharField(max_length=64, blank=True)
    ray_trial_id = models.CharField(max_length=200, blank=True)
    node = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "number"]
        constraints = [
            models.UniqueConstraint(fields=["study", "number"], name="unique_trial_number_per_study"),
        ]

    def __str__(self) -> str:
        return f"trial {self.number} of study {self.study_id} ({self.state})"


class TuningParamConfig(models.Model):
    """One searched hyperparameter of a study, as Optuna's distribution describes it."""

    class Type(models.TextChoices):
        FLOAT = "float"
        INT = "int"
        CATEGORICAL = "categorical"

    study = models.ForeignKey(
        TuningStudy, on_delete=models.CASCADE, related_name="param_configs"
    )
    name = models.CharField(max_length=200, help_text="Dotted key, e.g. training.learning_rate.")
    type = models.CharField(max_length=16, choices=Type.choices)
    low = models.FloatField(null=True, blank=True)
    high = models.FloatField(null=True, blank=True)
    log = models.BooleanField(default=False)
    step = models.FloatField(null=True, blank=True)
    choices = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["study", "name"]
        constraints = [
            models.UniqueConstraint(fields=["study", "name"], name="unique_param_name_per_study"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.type})"
