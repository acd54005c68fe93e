"""Try a theme's champion model on uploaded images: find it, load it once, label images.

The web UI's one door to the registered model. It reads MLflow and never writes to it:
the champion is `models:/<theme>_model@champion` in the MLflow store the theme's
studies recorded to, loaded as the MLflow pyfunc it is (theme_classifier.pyfunc) and
kept in this process, keyed by (store, model name, version), so that only the first
request after a new champion pays the load. Uploads are bounded while Django reads the
request (UploadLimits), so a huge or endless upload never fills the server's disk.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopUpload
from django.utils.translation import gettext as _

from data_access.selectors import StudyInfo
from tuning.errors import ThemetuneError
from tuning.config.infra import MlflowSection
from tuning.states import StudyStatus

PERMISSION = "data_access.try_model"
FIELD = "images"            # the form's multi-file input
MAX_FILES = 20
MAX_FILE_MB = 20
MAX_FILE_BYTES = MAX_FILE_MB * 1024 * 1024
TOP = 3                     # classes shown per image
THUMBNAIL_PX = 64
# Loaded models kept in this process; a ResNet101 pyfunc holds ~170 MB.
CACHE_SIZE = 4
CHAMPION = "champion"       # tuning.tracking.mlflow_runs.CHAMPION, without importing MLflow here
DEFAULT_TRACKING_URI = MlflowSection().tracking_uri


class TryModelError(ThemetuneError):
    """The MLflow store cannot be read, or the champion cannot be loaded from it."""


# ---------------------------------------------------------------- which store, which model


def model_name(theme_name: str) -> str:
    """The name a study registers its theme's best model under (tuning.study)."""
    return f"{theme_name}_model"


def form_context(theme_name: str) -> dict:
    """What the upload form and the page around it show (templates: _try_model_form)."""
    from tuning.tracking.report import champion_uri

    return {"field": FIELD, "max_files": MAX_FILES, "max_mb": MAX_FILE_MB,
            "uri": champion_uri(model_name(theme_name))}


def newest_completed(studies: list[StudyInfo]) -> StudyInfo | None:
    completed = [s for s in studies if s.status == StudyStatus.COMPLETED]
    return max(completed, key=lambda s: s.id, default=None)


def study_tracking_uri(study: StudyInfo) -> str:
    """The store the study recorded to: MLFLOW_TRACKING_URI when set (it wins in the
    driver too), else config.yaml's mlflow.tracking_uri as the study resolved it."""
    mlflow = (study.resolved_config.get("config") or {}).get("mlflow") or {}
    return _resolved(mlflow.get("tracking_uri") or DEFAULT_TRACKING_URI)


def theme_tracking_uri(studies: list[StudyInfo]) -> str:
    """The store of the theme's newest completed study; with none, the default one."""
    study = newest_completed(studies)
    return study_tracking_uri(study) if study else _resolved(DEFAULT_TRACKING_URI)


def _resolved(configured: str) -> str:
    from tuning.tracking.mlflow_runs import resolve_tracking_uri

    return _in_repo(resolve_tracking_uri(configured))


def _in_repo(uri: str) -> str:
    """A relative SQLite path means the repository's folder: studies launched from the
    web run there (web.launch starts launch.py in BASE_DIR, and makes the path absolute
    for a Ray job), and so does a study started from the command line at the repo root."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    path = uri[len(prefix):]
    if not path or path.startswith(":memory:"):
        return uri
    return prefix + os.path.normpath(Path(settings.BASE_DIR) / path)


def shown_uri(uri: str) -> str:
    """The tracking URI without a password, to show on a page."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# ---------------------------------------------------------------- the champion


@dataclass(frozen=True)
class Champion:
    tracking_uri: str
    model_name: str
    version: str
    source: str         # where the version's files are (its download URI)
    run_id: str

    @property
    def uri(self) -> str:
        from tuning.tracking.report import champion_uri

        return champion_uri(self.model_name)

    @property
    def store(self) -> str:
        return shown_uri(self.tracking_uri)

    @property
    def ui_url(self) -> str:
        """The version's page in the MLflow UI of MLFLOW_UI_URL."""
        return (f"{settings.THEMETUNE_MLFLOW_UI_URL}/#/models/{quote(self.model_name)}"
                f"/versions/{self.version}")


def find_champion(*, tracking_uri: str, name: str) -> Champion | None:
    """The version the `champion` alias points at now; None when the store, the model
    or the alias does not exist. Raises TryModelError when the store cannot be read."""
    if _missing_sqlite(tracking_uri):
        # Opening it would create an empty store: nothing to find, and nothing to write.
        return None
    from mlflow.exceptions import MlflowException

    from tuning.tracking import mlflow_runs

    try:
        mlflow_runs.check_reachable(tracking_uri)   # a quick "no server", not minutes of retries
        client = _client(tracking_uri)
        try:
            registered = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = registered.aliases.get(CHAMPION)
        if version is None:
            return None
        found = client.get_model_version(name, str(version))
        source = client.get_model_version_download_uri(name, str(version))
    except (MlflowException, ThemetuneError) as exc:
        raise TryModelError(f"cannot read MLflow store {shown_uri(tracking_uri)} "
                            f"({_first_line(exc)}).",
                            fix="check MLFLOW_TRACKING_URI or the study's "
                                "mlflow.tracking_uri.") from None
    return Champion(tracking_uri=tracking_uri, model_name=name, version=str(found.version),
                    source=source, run_id=found.run_id or "")


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    # The registry lives in the tracking store unless MLFLOW_REGISTRY_URI says otherwise,
    # as in the driver that registered the model.
    return MlflowClient(tracking_uri=tracking_uri,
                        registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri)


def _missing_sqlite(uri: str) -> bool:
    prefix = "sqlite:///"
    return uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file()


def _first_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, ThemetuneError) else str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------- loading, once

_models: OrderedDict[tuple[str, str, str], object] = OrderedDict()
_lock = threading.Lock()


def load(champion: Champion):
    """The champion's pyfunc, loaded at most once per (store, name, version)."""
    key = (champion.tracking_uri, champion.model_name, champion.version)
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        model = _load(champion)
        _models[key] = model
        while len(_models) > CACHE_SIZE:
            _models.popitem(last=False)
        return model


def cached_versions() -> list[tuple[str, str, str]]:
    with _lock:
        return list(_models)


def _load(champion: Champion):
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    # Imported first, so that the model's classes and errors are this checkout's
    # theme_classifier, not the copy in the model's code/ folder (which pyfunc puts
    # on sys.path, and which is deleted below).
    import theme_classifier.pyfunc  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="themetune-model-") as folder:
        try:
            # Downloaded by its concrete location with an explicit store: a models:/ URI
            # would be resolved against the process's global tracking URI.
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=champion.source, dst_path=folder,
                tracking_uri=champion.tracking_uri)
            model = mlflow.pyfunc.load_model(path)
        except (MlflowException, OSError) as exc:
            raise TryModelError(f"cannot load {champion.uri} (version {champion.version}) "
                                f"from MLflow store {champion.store} ({_first_line(exc)}).",
                                fix="check the model's artifacts in the MLflow UI.") from None
        finally:
            sys.path[:] = [p for p in sys.path if not p.startswith(folder)]
    # The weights were read into memory by load_context: the folder is no longer needed.
    return model


# ---------------------------------------------------------------- uploads, bounded


@dataclass(frozen=True)
class Upload:
    name: str
    file: object | None         # the bytes sent, spooled; None when refused
    refusal: str = ""


class UploadLimits(FileUploadHandler):
    """The request's only upload handler: keeps each file of the form's input (in memory
    up to FILE_UPLOAD_MAX_MEMORY_SIZE, then in a temporary file), drops one that grows
    past MAX_FILE_BYTES as it arrives, and stops reading after MAX_FILES files.
    `files` lists them in the order sent, the refused ones with the reason."""

    def __init__(self, request=None):
        super().__init__(request)
        self.files: list[Upload] = []
        self.too_many = False
        # Not named `file`: on a skipped file the parser closes every handler's `file`,
        # which could still be the previous, completed one.
        self._spool = None

    def new_file(self, field_name, file_name, *args, **kwargs):
        super().new_file(field_name, file_name, *args, **kwargs)
        self._spool = None
        if field_name != FIELD:
            raise SkipFile()
        if len(self.files) >= MAX_FILES:
            self.too_many = True
            raise StopUpload(connection_reset=False)   # the rest is read and dropped
        if self.content_length is not None and self.content_length > MAX_FILE_BYTES:
            self._refuse()
        self._spool = tempfile.SpooledTemporaryFile(
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > MAX_FILE_BYTES:
            self._spool.close()
            self._refuse()
        self._spool.write(raw_data)
        return None

    def file_complete(self, file_size):
        self._spool.seek(0)
        self.files.append(Upload(self.file_name, self._spool))
        self._spool = None
        return None     # kept here, not in request.FILES

    def upload_interrupted(self):
        if self._spool is not None:
            self._spool.close()

    def _refuse(self):
        self._spool = None
        self.files.append(Upload(self.file_name, None,
                                 _("larger than %(mb)s MB") % {"mb": MAX_FILE_MB}))
        raise SkipFile()


def limit_uploads(request) -> UploadLimits:
    """Put the limits in place; call before anything reads request.POST or FILES."""
    limits = UploadLimits(request)
    request.upload_handlers = [limits]
    return limits


def uploads(request, limits: UploadLimits) -> list[Upload]:
    """The form's files in the order sent, the refused ones included."""
    request.FILES   # noqa: B018  parses the body (once), through the limits
    return limits.files


# ---------------------------------------------------------------- predictions


@dataclass(frozen=True)
class ClassProbability:
    name: str
    probability: float

    @property
    def percent(self) -> str:
        return f"{self.probability * 100:.1f}"


@dataclass(frozen=True)
class Prediction:
    name: str
    top: tuple[ClassProbability, ...] = ()     # best first; top[0] is the label
    error: str = ""
    thumbnail: str = ""                         # a data: URI, empty if none

    @property
    def label(self) -> ClassProbability | None:
        return self.top[0] if self.top else None


def predict(champion: Champion, files: list[Upload]) -> list[Prediction]:
    """One Prediction per upload, in order; an unreadable one gets its error instead."""
    model = load(champion)
    try:
        return [_predict_one(model, upload) for upload in files]
    finally:
        for upload in files:
            if upload.file is not None:
                upload.file.close()


def _predict_one(model, upload: Upload) -> Prediction:
    import pandas as pd
    from PIL import Image

    from theme_classifier.pyfunc import UnreadableImageError

    if upload.file is None:
        return Prediction(upload.name, error=upload.refusal)
    data = upload.file.read()
    try:
        frame = model.predict(pd.DataFrame({"image": [data]}))
    except (UnreadableImageError, Image.DecompressionBombError):
        return Prediction(upload.name, error=_("not an image file"))
    # Columns: label, probability, then one per class (by position: a class may be
    # named "label").
    row = frame.iloc[0]
    classes = [ClassProbability(str(name), float(p))
               for name, p in zip(frame.columns[2:], row.iloc[2:])]
    classes.sort(key=lambda c: c.probability, reverse=True)
    return Prediction(upload.name, top=tuple(classes[:TOP]), thumbnail=_thumbnail(data))


def _thumbnail(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            im.save(out, format="PNG")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return ""   # the model read it; a picture on the page is only a nicety
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
