"""Try a theme's champion model on uploaded images: find it, load it once, label images.

The web UI's use of the registered model, through the registry's door (tracking.registry)
and never writing to it: the theme's champion in the MLflow store the theme's studies
recorded to, loaded as the MLflow pyfunc it is with the code it shipped with
(tracking.model_loading) and kept in this process, keyed by (store, model name,
version), so that only the first request after a new champion pays the load. Uploads
are bounded while Django reads the request (UploadLimits), so a huge or endless upload
never fills the server's disk; and by the pixels their headers declare before anything
decodes them (PixelBudget), so that a few small files of huge dimensions (a 10000x10000
PNG is 12 KB) cannot hold a server thread for minutes. Each image is decoded in full
once, by the model; its thumbnail comes from a second decode only when that is small.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopUpload
from django.utils.translation import gettext as _

from data_access.selectors import StudyInfo
from tuning.config.infra import MlflowSection
from tuning.errors import TrackingStoreError, TryModelError
from tuning.states import StudyStatus
from tuning.tracking import model_loading, registry

PERMISSION = "data_access.try_model"
FIELD = "images"            # the form's multi-file input
MAX_FILES = 20
MAX_FILE_MB = 20
MAX_FILE_BYTES = MAX_FILE_MB * 1024 * 1024
TOP = 3                     # classes shown per image
THUMBNAIL_PX = 64
# Decoding costs ~10 ms per megapixel on one core: a 50 MP camera's photo passes, a
# request holds a server thread for about a second at most.
MAX_IMAGE_MEGAPIXELS = 50
MAX_REQUEST_MEGAPIXELS = 120
MEGAPIXEL = 1_000_000
# A JPEG decodes at down to 1/8 of its sides (draft); the model asks for its input size,
# at most this side, so such a decode never holds fewer pixels than its square.
JPEG_DRAFT_SIDE = 1024
# A thumbnail is drawn from a second decode only when it costs no more than this.
THUMBNAIL_MAX_PIXELS = 1_000_000
# Loaded models kept in this process; a ResNet101 pyfunc holds ~170 MB.
CACHE_SIZE = 4
DEFAULT_TRACKING_URI = MlflowSection().tracking_uri


# ---------------------------------------------------------------- which store, which model


def form_context(theme_name: str) -> dict:
    """What the upload form and the page around it show (templates: _try_model_form)."""
    return {"field": FIELD, "max_files": MAX_FILES, "max_mb": MAX_FILE_MB,
            "max_mp": MAX_IMAGE_MEGAPIXELS, "max_request_mp": MAX_REQUEST_MEGAPIXELS,
            "uri": registry.champion_uri(registry.model_name(theme_name))}


def newest_completed(studies: list[StudyInfo]) -> StudyInfo | None:
    completed = [s for s in studies if s.status == StudyStatus.COMPLETED]
    return max(completed, key=lambda s: s.id, default=None)


def study_tracking_uri(study: StudyInfo) -> str:
    """The store the study recorded to, as the driver chose it (registry.tracking_uri)
    from the study's resolved mlflow.tracking_uri."""
    mlflow = (study.resolved_config.get("config") or {}).get("mlflow") or {}
    return _in_repo(registry.tracking_uri(mlflow.get("tracking_uri") or DEFAULT_TRACKING_URI))


def theme_tracking_uri(studies: list[StudyInfo]) -> str:
    """The store of the theme's newest completed study; with none, the default one."""
    study = newest_completed(studies)
    return study_tracking_uri(study) if study else \
        _in_repo(registry.tracking_uri(DEFAULT_TRACKING_URI))


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


class Champion(registry.Champion):
    """The registry's champion, as the page shows it."""

    @property
    def store(self) -> str:
        return shown_uri(self.tracking_uri)

    @property
    def ui_url(self) -> str:
        """The version's page in the MLflow UI of MLFLOW_UI_URL."""
        return (f"{settings.THEMETUNE_MLFLOW_UI_URL}/#/models/{quote(self.model_name)}"
                f"/versions/{self.version}")


def find_champion(*, tracking_uri: str, theme_name: str) -> Champion | None:
    """The theme's champion now (registry.champion); None when the store, the model or
    the alias does not exist. Raises TryModelError when the store cannot be read."""
    try:
        found = registry.champion(tracking_uri=tracking_uri,
                                  name=registry.model_name(theme_name))
    except TrackingStoreError as exc:
        raise TryModelError(f"cannot read MLflow store {shown_uri(tracking_uri)} "
                            f"({exc.message}).",
                            fix=f"check {registry.TRACKING_URI_ENV} or the study's "
                                f"{registry.CONFIG_KEY}.") from None
    return None if found is None else Champion(**asdict(found))


# ---------------------------------------------------------------- loading, once

_models: OrderedDict[tuple[str, str, str], model_loading.LoadedModel] = OrderedDict()
_lock = threading.Lock()


def load(champion: Champion) -> model_loading.LoadedModel:
    """The champion's pyfunc with the code it shipped with (model_loading), loaded at
    most once per (store, name, version)."""
    key = (champion.tracking_uri, champion.model_name, champion.version)
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        try:
            # By the version's concrete location: the alias may have moved since.
            model = model_loading.load_model(champion.source,
                                             tracking_uri=champion.tracking_uri)
        except TrackingStoreError as exc:
            raise TryModelError(f"cannot load {champion.uri} (version {champion.version}) "
                                f"from MLflow store {champion.store} ({exc.message}).",
                                fix="check the model's artifacts in the MLflow UI.") from None
        _models[key] = model
        while len(_models) > CACHE_SIZE:
            _models.popitem(last=False)
        return model


def cached_versions() -> list[tuple[str, str, str]]:
    with _lock:
        return list(_models)


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
    """One Prediction per upload, in order; an unreadable one, or one over the pixel
    limits (told from its header, never decoded), gets its error instead."""
    budget = PixelBudget()
    try:
        return [_predict_one(champion, upload, budget) for upload in files]
    finally:
        for upload in files:
            if upload.file is not None:
                upload.file.close()


class PixelBudget:
    """The pixels one request may have decoded: MAX_IMAGE_MEGAPIXELS per image, and
    MAX_REQUEST_MEGAPIXELS in all (the images after that are not read)."""

    def __init__(self) -> None:
        self.left = MAX_REQUEST_MEGAPIXELS * MEGAPIXEL

    def refusal(self, data: bytes) -> str:
        """Why this image is not decoded ("" when it fits; it is then counted)."""
        from PIL import Image

        try:
            with warnings.catch_warnings():
                # The limits below speak for themselves; Pillow's warning would go to the log.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:   # the header only: nothing decoded
                    width, height, jpeg = im.width, im.height, im.format == "JPEG"
        except Image.DecompressionBombError:
            return _too_large()
        except Exception:   # noqa: BLE001  not an image Pillow knows: the model says so
            return ""
        cost = decode_cost(width, height, jpeg=jpeg)
        if cost > MAX_IMAGE_MEGAPIXELS * MEGAPIXEL:
            return _too_large(width, height)
        if cost > self.left:
            return _("not labelled: the images of one request may hold %(mp)s megapixels in "
                     "all; send this one again on its own") % {"mp": MAX_REQUEST_MEGAPIXELS}
        self.left -= cost
        return ""


def decode_cost(width: int, height: int, *, jpeg: bool) -> int:
    """The pixels a decode of the image holds: all of them, or for a JPEG those of the
    1/8-scale draft, never fewer than a JPEG_DRAFT_SIDE square (or the image)."""
    pixels = width * height
    if not jpeg:
        return pixels
    return max(-(-width // 8) * -(-height // 8), min(pixels, JPEG_DRAFT_SIDE ** 2))


def _too_large(width: int | None = None, height: int | None = None) -> str:
    if width is None:
        return _("more than %(mp)s megapixels, the most one image may have") % {
            "mp": MAX_IMAGE_MEGAPIXELS}
    return _("%(width)s × %(height)s pixels: more than %(mp)s megapixels, the most one "
             "image may have") % {"width": width, "height": height,
                                  "mp": MAX_IMAGE_MEGAPIXELS}


def _predict_one(champion: Champion, upload: Upload, budget: PixelBudget) -> Prediction:
    import pandas as pd
    from PIL import Image

    if upload.file is None:
        return Prediction(upload.name, error=upload.refusal)
    data = upload.file.read()
    refusal = budget.refusal(data)
    if refusal:
        return Prediction(upload.name, error=refusal)
    model = load(champion)   # loaded at most once: not at all when every image is refused
    try:
        frame = model.predict(pd.DataFrame({"image": [data]}))
    # The model's own error class: its shipped code is not this checkout's.
    except (model.unreadable_error, Image.DecompressionBombError):
        return Prediction(upload.name, error=_("not an image file"))
    row, error = model.split_row(frame.iloc[0])
    if error:
        return Prediction(upload.name, error=_("not an image file"))
    classes = [ClassProbability(str(name), float(p))
               for name, p in zip(row.index[2:], row.iloc[2:])]
    classes.sort(key=lambda c: c.probability, reverse=True)
    return Prediction(upload.name, top=tuple(classes[:TOP]), thumbnail=_thumbnail(data))


def _thumbnail(data: bytes) -> str:
    """A small PNG of the image, when drawing it costs little (a JPEG's 1/8 draft, or
    at most THUMBNAIL_MAX_PIXELS): the model's decode was the one that counts."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))
            if im.width * im.height > THUMBNAIL_MAX_PIXELS:
                return ""
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            im.save(out, format="PNG")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return ""   # the model read it; a picture on the page is only a nicety
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
