"""Writes. Every function takes keyword-only arguments.

Theme imports are all or nothing: every image is checked before anything is written,
and a failure while writing rolls back the rows and deletes the files already copied.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone as django_timezone
from PIL import Image

from data_access.db import database_description
from data_access.models import Theme, ThemeImage, TuningParamConfig, TuningStudy, TuningTrial
from data_access.selectors import THEME_LIST_FIX, StudyNotFoundError
from tuning.errors import DataError, ThemeError
from tuning.recording import StudyEnd, StudyStart, TrialEnd, TrialResult, TrialStart

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Formats Pillow may detect: a file named .png that is really a GIF is refused.
PIL_FORMATS = ("PNG", "JPEG", "BMP")
ACCEPTED_MODES = {"L": "grayscale", "RGB": "RGB", "RGBA": "RGBA"}
NAME_MAX_LENGTH = Theme._meta.get_field("name").max_length
LABEL_MAX_LENGTH = ThemeImage._meta.get_field("label").max_length
IMAGE_FIX = (
    "replace or delete the file; accepted: .png, .jpg, .jpeg or .bmp files in "
    "grayscale, RGB or RGBA."
)


# ---------------------------------------------------------------- themes


@dataclass(frozen=True)
class _Item:
    label: str
    filename: str
    source: Path | bytes


def theme_import_folder(*, directory: str | os.PathLike[str], name: str,
                        description: str = "") -> Theme:
    """Import an ImageFolder tree: one sub-folder per class, images anywhere below it.

    Files with other extensions and hidden files are ignored. Raises ThemeError for a
    missing or badly shaped folder or a taken name, DataError for an image Pillow
    cannot read; in both cases nothing is written."""
    root = Path(directory).expanduser().absolute()
    name = _check_new_name(name)
    items = _scan_image_folder(root)
    _verify_images(root, items)
    return _write_theme(name=name, description=description, items=items)


def theme_import_demo(*, name: str = "digits_demo") -> Theme:
    """The demo theme: scikit-learn's bundled 1,797 handwritten digits (8x8, classes 0-9),
    written as grayscale PNGs. Needs no download."""
    # Imported here: scikit-learn is slow to import and only this function needs it.
    import numpy as np
    from sklearn.datasets import load_digits

    name = _check_new_name(name)
    digits = load_digits()
    # The digits are 0..16 ink levels; stretch them to the full 8-bit range.
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    items = []
    for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        buffer = io.BytesIO()
        # A 2-D uint8 array becomes a grayscale (mode L) image.
        Image.fromarray(image).save(buffer, format="PNG")
        items.append(_Item(label=str(int(target)), filename=f"{index:04d}.png",
                           source=buffer.getvalue()))
    description = ("scikit-learn's handwritten digits (load_digits): 1,797 grayscale "
                   "8x8 images, classes 0-9.")
    return _write_theme(name=name, description=description, items=items)


def theme_delete(*, theme_id: int) -> None:
    """Delete a theme, its image rows and, once the deletion is committed, its files.

    Raises django.db.models.ProtectedError when studies still refer to the theme."""
    with transaction.atomic():
        theme = Theme.objects.filter(pk=theme_id).first()
        if theme is None:
            raise ThemeError(
                f"Theme {theme_id} not found in database {database_description()}.",
                fix=THEME_LIST_FIX,
            )
        names = list(theme.images.values_list("image", flat=True))
        theme.delete()
        # Files go only after the commit: a rolled-back delete must keep them.
        transaction.on_commit(lambda: _delete_files(names))


def _check_new_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ThemeError("The theme name must not be empty.", fix="pass --name NAME.")
    if len(name) > NAME_MAX_LENGTH:
        raise ThemeError(
            f"The theme name must be at most {NAME_MAX_LENGTH} characters "
            f"(got {len(name)}).", fix="pass a shorter --name.",
        )
    existing = Theme.objects.filter(name=name).values_list("id", flat=True).first()
    if existing is not None:
        raise ThemeError(
            f"A theme named '{name}' already exists (id {existing}).",
            fix=f"use it with --theme-id {existing}, or import under another --name.",
        )
    return name


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _scan_image_folder(root: Path) -> list[_Item]:
    fix_layout = (f"put each class's images in its own sub-folder of {root}, "
                  f"e.g. {root}/cat/001.png and {root}/dog/001.png.")
    if not root.exists():
        raise ThemeError(f"Directory {root} does not exist.", fix=fix_layout)
    if not root.is_dir():
        raise ThemeError(f"{root} is not a directory.", fix=fix_layout)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p.name))
    if not class_dirs:
        raise ThemeError(f"Directory {root} has no class sub-folders.", fix=fix_layout)

    items: list[_Item] = []
    empty: list[str] = []
    for class_dir in class_dirs:
        label = class_dir.name
        if len(label) > LABEL_MAX_LENGTH:
            raise ThemeError(
                f"Class folder names must be at most {LABEL_MAX_LENGTH} characters: "
                f"{class_dir}.", fix="rename the folder.",
            )
        found = _images_below(class_dir)
        if not found:
            empty.append(label)
        items.extend(_Item(label=label, filename=p.name, source=p) for p in found)
    if not items:
        raise ThemeError(
            f"No images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files, any "
            f"case, in {len(class_dirs)} class folder(s)).", fix=fix_layout,
        )
    if empty:
        # A class with no examples cannot be trained or tested: say so now rather
        # than as a strange error in the middle of a study.
        raise ThemeError(
            f"Class folder(s) without images in {root}: {', '.join(empty)}.",
            fix="add images to them or remove them.",
        )
    return items


def _images_below(class_dir: Path) -> list[Path]:
    found = []
    # followlinks: datasets are often assembled from symlinked folders.
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for filename in sorted(filenames):
            if _visible(filename) and filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / filename)
    return found


def _image_problem(path: Path) -> str | None:
    """Why Pillow cannot use this file, or None when it decodes fully."""
    try:
        with Image.open(path, formats=PIL_FORMATS) as image:
            mode = image.mode
            # load() decodes every pixel: a truncated file fails here, not in a trial.
            image.load()
    except Image.UnidentifiedImageError:
        return "not a PNG, JPEG or BMP image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    if mode not in ACCEPTED_MODES:
        return f"pixel mode {mode} is not grayscale (L), RGB or RGBA"
    return None


def _verify_images(root: Path, items: list[_Item]) -> None:
    problems = []
    for item in items:
        problem = _image_problem(item.source)
        if problem is not None:
            problems.append((item.source, problem))
    if not problems:
        return
    path, problem = problems[0]
    more = (f" {len(problems) - 1} more of the {len(items)} images in {root} cannot be "
            f"used either." if len(problems) > 1 else "")
    raise DataError(f"cannot be used as an image: {problem}.{more}", file=str(path),
                    fix=IMAGE_FIX)


def _write_theme(*, name: str, description: str, items: Iterable[_Item]) -> Theme:
    saved: list[str] = []
    try:
        with transaction.atomic():
            theme = Theme.objects.create(name=name, description=description)
            rows = []
            for item in items:
                row = ThemeImage(theme=theme, label=item.label)
                if isinstance(item.source, bytes):
                    row.image.save(item.filename, ContentFile(item.source), save=False)
                else:
                    with item.source.open("rb") as handle:
                        row.image.save(item.filename, File(handle), save=False)
                saved.append(row.image.name)
                rows.append(row)
            ThemeImage.objects.bulk_create(rows, batch_size=500)
    except IntegrityError as exc:
        _delete_files(saved)
        # Another import took the name between our check and our insert.
        raise ThemeError(f"Could not create theme '{name}': {exc}.",
                         fix="import under another --name.") from exc
    except BaseException:
        # Rows are rolled back by atomic(); the copied files are ours to remove.
        _delete_files(saved)
        raise
    return theme


def _delete_files(names: list[str]) -> None:
    folders = set()
    for name in names:
        default_storage.delete(name)
        folders.add(os.path.dirname(name))
    # Remove the folders the import created, deepest first, while they are empty.
    candidates = set()
    for folder in folders:
        while folder and folder != "themes":
            candidates.add(folder)
            folder = os.path.dirname(folder)
    for folder in sorted(candidates, key=lambda f: f.count("/"), reverse=True):
        path = default_storage.path(folder)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


# ---------------------------------------------------------------- studies and trials


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    # Events carry datetime.now(): naive local time of the driver.
    return moment.astimezone().astimezone(dt_timezone.utc)


def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN and infinities become null (PostgreSQL's jsonb refuses them),
    numpy scalars become Python numbers, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return _json_safe(value.item())
    return str(value)


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _redact_url(url: str | None) -> str:
    """The URL without its password: the study row is shown in the admin and web UI."""
    if not url:
        return ""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _param_configs(event: StudyStart) -> list[TuningParamConfig]:
    configs = []
    for param_name, spec in event.param_space.items():
        param_type = spec.get("type")
        if param_type not in TuningParamConfig.Type.values:
            raise ValueError(f"param_space[{param_name!r}]['type'] must be one of "
                             f"{TuningParamConfig.Type.values}, got {param_type!r}")
        configs.append(TuningParamConfig(
            name=param_name,
            type=param_type,
            low=_finite(spec.get("low")),
            high=_finite(spec.get("high")),
            log=bool(spec.get("log", False)),
            step=_finite(spec.get("step")),
            choices=_json_safe(spec.get("choices")),
        ))
    return configs


def _start_fields(event: StudyStart) -> dict[str, Any]:
    """The study row's columns that a StudyStart sets."""
    return dict(
        theme_id=event.theme_id,
        name=event.name,
        status=TuningStudy.Status.RUNNING,
        direction=event.direction,
        metric=event.metric,
        n_trials=event.n_trials,
        resolved_config=_json_safe(event.resolved_config),
        optuna_study_name=event.optuna_study_name,
        optuna_storage=_redact_url(event.optuna_storage),
        mlflow_experiment_id=event.mlflow_experiment_id or "",
        mlflow_parent_run_id=event.mlflow_parent_run_id or "",
        ray_job_id=event.ray_job_id or "",
        experiment_path=event.experiment_path or "",
        started_at=_aware(event.started_at),
    )


def _require_theme(theme_id: int) -> None:
    if not Theme.objects.filter(pk=theme_id).exists():
        raise ThemeError(
            f"Theme {theme_id} not found in database {database_description()}.",
            fix=THEME_LIST_FIX,
        )


def study_create(*, theme_id: int, event: StudyStart) -> TuningStudy:
    """A running study and one TuningParamConfig row per searched parameter."""
    configs = _param_configs(event)
    with transaction.atomic():
        _require_theme(theme_id)
        study = TuningStudy.objects.create(**{**_start_fields(event), "theme_id": theme_id})
        for config in configs:
            config.study = study
        TuningParamConfig.objects.bulk_create(configs)
    return study


def study_start_existing(*, study_id: int, event: StudyStart, driver_pid: int | None = None,
                         driver_start: str = "") -> TuningStudy:
    """Fill in an existing row (made by the web UI before it launched the study, or a
    study being resumed) as study_create would have made it. Raises StudyNotFoundError
    when the row is gone.

    The row then follows the driver that records into it: its Ray job, or else (for a
    study the web UI launched) its process, so that the UI watches and stops the right
    one; a cancel or an end noted for an earlier driver no longer applies."""
    configs = _param_configs(event)
    with transaction.atomic():
        study = TuningStudy.objects.select_for_update().filter(pk=study_id).first()
        if study is None:
            raise StudyNotFoundError(
                f"Study {study_id} not found in database {database_description()}.",
                fix="launch without --record-id, or create the study in the web UI.")
        _require_theme(event.theme_id)
        fields = _start_fields(event)
        if fields["ray_job_id"]:
            fields["launcher"] = TuningStudy.Launcher.RAY_JOB
        else:
            # The launcher's Ray job id is kept when the driver does not know its own.
            fields.pop("ray_job_id")
            if study.launcher and driver_pid is not None:
                fields.update(launcher=TuningStudy.Launcher.LOCAL, process_id=driver_pid,
                              process_start=driver_start)
        fields.update(cancel_requested_at=None, error="", ended_at=None)
        for name, value in fields.items():
            setattr(study, name, value)
        study.save()
        study.param_configs.all().delete()
        for config in configs:
            config.study = study
        TuningParamConfig.objects.bulk_create(configs)
    return study


def study_finish(*, study_id: int, event: StudyEnd) -> None:
    if event.status not in TuningStudy.Status.values:
        raise ValueError(f"StudyEnd.status must be one of {TuningStudy.Status.values}, "
                         f"got {event.status!r}")
    TuningStudy.objects.filter(pk=study_id).update(
        status=event.status,
        best_value=_finite(event.best_value),
        best_params=_json_safe(event.best_params),
        best_trial_number=event.best_trial_number,
        registered_model=event.registered_model or "",
        registered_version=event.registered_version or "",
        error=event.error or "",
        ended_at=_aware(event.ended_at),
    )


def trial_start(*, study_id: int, event: TrialStart) -> TuningTrial:
    # update_or_create: a trial that Ray restarts is started again under the same number.
    trial, _ = TuningTrial.objects.update_or_create(
        study_id=study_id,
        number=event.number,
        defaults={
            "state": TuningTrial.State.RUNNING,
            "params": _json_safe(event.params),
            "mlflow_run_id": event.mlflow_run_id or "",
            "ray_trial_id": event.ray_trial_id or "",
            "started_at": _aware(event.started_at),
            "ended_at": None,
            "error": "",
        },
    )
    return trial


def trial_add_result(*, study_id: int, event: TrialResult) -> None:
    """Append one epoch's metrics. A report for an epoch at or before the last one
    recorded (the trial was restarted) replaces the entries from that epoch on."""
    entry = {"epoch": event.epoch}
    entry.update(
        (key, _json_safe(value)) for key, value in event.metrics.items() if key != "epoch"
    )
    with transaction.atomic():
        trial, _ = TuningTrial.objects.select_for_update().get_or_create(
            study_id=study_id, number=event.number,
        )
        kept = [m for m in trial.metrics if m.get("epoch", -1) < event.epoch]
        trial.metrics = [*kept, entry]
        fields = ["metrics"]
        if event.node:
            trial.node = event.node
            fields.append("node")
        trial.save(update_fields=fields)


def trial_finish(*, study_id: int, event: TrialEnd) -> None:
    if event.state not in TuningTrial.State.values:
        raise ValueError(f"TrialEnd.state must be one of {TuningTrial.State.values}, "
                         f"got {event.state!r}")
    TuningTrial.objects.update_or_create(
        study_id=study_id,
        number=event.number,
        defaults={
            "state": event.state,
            "value": _finite(event.value),
            "error": event.error or "",
            "ended_at": _aware(event.ended_at),
        },
    )


# ---------------------------------------------------------------- studies launched by the web UI

_ACTIVE = (TuningStudy.Status.PENDING, TuningStudy.Status.RUNNING)


def study_create_pending(*, theme_id: int, name: str, optuna_study_name: str,
                         direction: str, metric: str, n_trials: int,
                         resolved_config: dict[str, Any], launcher: str) -> TuningStudy:
    """The row of a study about to be launched; launch.py --record-id fills it in."""
    if launcher not in TuningStudy.Launcher.values:
        raise ValueError(f"launcher must be one of {TuningStudy.Launcher.values}, "
                         f"got {launcher!r}")
    with transaction.atomic():
        _require_theme(theme_id)
        return TuningStudy.objects.create(
            theme_id=theme_id, name=name, status=TuningStudy.Status.PENDING,
            direction=direction, metric=metric, n_trials=n_trials,
            resolved_config=_json_safe(resolved_config),
            optuna_study_name=optuna_study_name, launcher=launcher)


def study_set_run_dir(*, study_id: int, run_dir: str) -> None:
    TuningStudy.objects.filter(pk=study_id).update(run_dir=run_dir)


def study_set_launched(*, study_id: int, process_id: int | None = None,
                       process_start: str = "", ray_job_id: str = "") -> None:
    fields: dict[str, Any] = {"process_id": process_id, "process_start": process_start}
    if ray_job_id:
        fields["ray_job_id"] = ray_job_id
    TuningStudy.objects.filter(pk=study_id).update(**fields)


def study_prepare_resume(*, study_id: int, launcher: str) -> bool:
    """Reopen an ended (killed or failed) study for `launch.py --resume`: pending again,
    run by `launcher`; its trials and results stay. False when it is not ended that way."""
    if launcher not in (TuningStudy.Launcher.LOCAL, TuningStudy.Launcher.RAY_JOB):
        raise ValueError(f"launcher must be local or ray, got {launcher!r}")
    updated = TuningStudy.objects.filter(
        pk=study_id, status__in=(TuningStudy.Status.KILLED, TuningStudy.Status.FAILED),
    ).update(status=TuningStudy.Status.PENDING, launcher=launcher, process_id=None,
             process_start="", cancel_requested_at=None, error="", ended_at=None)
    return bool(updated)


def study_request_cancel(*, study_id: int) -> bool:
    """Note that the user asked to stop the study. False when it already ended."""
    updated = TuningStudy.objects.filter(pk=study_id, status__in=_ACTIVE).update(
        cancel_requested_at=django_timezone.now())
    return bool(updated)


def study_mark_ended(*, study_id: int, status: str, error: str = "") -> bool:
    """End a study whose driver is gone without saying so (killed, crashed, or failed
    before it recorded its start). Trials still marked running end KILLED. False when
    the study had already ended: the driver's own record wins."""
    if status not in (TuningStudy.Status.FAILED, TuningStudy.Status.KILLED,
                      TuningStudy.Status.COMPLETED):
        raise ValueError(f"status must be failed, killed or completed, got {status!r}")
    now = django_timezone.now()
    with transaction.atomic():
        updated = TuningStudy.objects.filter(pk=study_id, status__in=_ACTIVE).update(
            status=status, error=error, ended_at=now)
        if updated:
            TuningTrial.objects.filter(study_id=study_id,
                                       state=TuningTrial.State.RUNNING).update(
                state=TuningTrial.State.KILLED, ended_at=now,
                error="the study's driver ended before the trial finished")
    return bool(updated)


def theme_set_default_params(*, theme_id: int, params: dict[str, Any],
                             study_id: int | None = None) -> None:
    """Save params.yaml values (nested) that prefill the theme's next study."""
    updated = Theme.objects.filter(pk=theme_id).update(
        default_params=_json_safe(params), default_params_study_id=study_id,
        updated_at=django_timezone.now())
    if not updated:
        raise ThemeError(
            f"Theme {theme_id} not found in database {database_description()}.",
            fix=THEME_LIST_FIX,
        )
