"""Admin for every model. Themes are deleted through services.theme_delete so that
their image files go with them."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count
from django.utils.html import format_html

from data_access import services
from data_access.models import Theme, ThemeImage, TuningParamConfig, TuningStudy, TuningTrial


@admin.register(Theme)
class ThemeAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "image_count", "class_count", "created_at", "updated_at")
    search_fields = ("name", "description")
    readonly_fields = ("created_at", "updated_at")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _image_count=Count("images"),
            _class_count=Count("images__label", distinct=True),
        )

    @admin.display(ordering="_image_count", description="images")
    def image_count(self, obj: Theme) -> int:
        return obj._image_count

    @admin.display(ordering="_class_count", description="classes")
    def class_count(self, obj: Theme) -> int:
        return obj._class_count

    def delete_model(self, request, obj: Theme) -> None:
        services.theme_delete(theme_id=obj.id)

    def delete_queryset(self, request, queryset) -> None:
        for theme_id in queryset.values_list("id", flat=True):
            services.theme_delete(theme_id=theme_id)


@admin.register(ThemeImage)
class ThemeImageAdmin(admin.ModelAdmin):
    list_display = ("id", "thumbnail", "theme", "label", "image", "created_at")
    list_filter = ("theme", "label")
    list_select_related = ("theme",)
    search_fields = ("label", "image")
    readonly_fields = ("created_at",)
    list_per_page = 50

    @admin.display(description="preview")
    def thumbnail(self, obj: ThemeImage) -> str:
        # pixelated: the demo images are 8x8 and a smoothed upscale hides the digit.
        return format_html(
            '<img src="{}" alt="" width="32" height="32" style="image-rendering: pixelated">',
            obj.image.url,
        )


class TuningParamConfigInline(admin.TabularInline):
    model = TuningParamConfig
    extra = 0


@admin.register(TuningStudy)
class TuningStudyAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "theme", "status", "metric", "direction", "best_value",
                    "best_trial_number", "n_trials", "started_at", "ended_at")
    list_filter = ("status", "direction", "theme")
    list_select_related = ("theme",)
    search_fields = ("name", "optuna_study_name", "mlflow_parent_run_id", "ray_job_id")
    # What the launcher and the watchdog act on: the process it signals, the run folder
    # it reads. Editable, it would let a staff user have another process killed.
    readonly_fields = ("created_at", "launcher", "process_id", "process_start",
                       "cancel_requested_at", "run_dir", "ray_job_id")
    inlines = [TuningParamConfigInline]


@admin.register(TuningTrial)
class TuningTrialAdmin(admin.ModelAdmin):
    list_display = ("id", "study", "number", "state", "value", "node", "started_at", "ended_at")
    list_filter = ("state", "study")
    list_select_related = ("study",)
    search_fields = ("mlflow_run_id", "ray_trial_id", "node")


@admin.register(TuningParamConfig)
class TuningParamConfigAdmin(admin.ModelAdmin):
    list_display = ("id", "study", "name", "type", "low", "high", "log", "step", "choices")
    list_filter = ("type", "study")
    list_select_related = ("study",)
    search_fields = ("name",)
