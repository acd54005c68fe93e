"""Load a logged model with the code it shipped with, as in a fresh process.

A model carries a copy of `theme_classifier` (its `code/` folder, model_package). A
process that already imported this checkout's `theme_classifier` (the web, which also
trains) would otherwise run an old champion with today's preprocessing: Python finds a
module in sys.modules before it looks at the model's folder. So the checkout's modules
are set aside while MLflow loads the model, and put back afterwards; the model keeps the
module objects it loaded, which are bound by their own globals, so two models of
different code live side by side in one process.

This holds because `theme_classifier` imports all of its own modules at the top (no
import inside a function would look `theme_classifier.*` up again at predict time;
tests/web/test_web_try_model.py checks it).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from tuning.errors import ThemetuneError, TrackingStoreError
from tuning.tracking import registry

SHIPPED_PACKAGE = "theme_classifier"
# Model URIs resolved through the tracking store (a local folder or a version's own
# download URI is read without it).
STORE_SCHEMES = ("models:", "runs:", "mlflow-artifacts:")
# sys.modules and sys.path are the process's: one load at a time.
_lock = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    pyfunc: object                          # mlflow.pyfunc.PyFuncModel
    unreadable_error: type[Exception]       # its code's UnreadableImageError

    @property
    def class_names(self) -> list[str]:
        return list(self.pyfunc.unwrap_python_model().class_names)

    def predict(self, frame):
        return self.pyfunc.predict(frame)

    def split_row(self, row):
        """A row of predict's frame as (its label, probability and one value per class;
        the reason it is not a readable image, "" when it is). By position, as a class
        may be named like a column: code that shipped later adds an `error` column after
        the classes, older code has none and raises instead."""
        width = 2 + len(self.class_names)
        error = row.iloc[width] if len(row) > width else ""
        return row.iloc[:width], str(error) if isinstance(error, str) else ""


def load_model(uri: str, *, tracking_uri: str) -> LoadedModel:
    """The model at `uri` (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a
    version's download URI) in the store `tracking_uri`, with its shipped code. Raises
    TrackingStoreError (the cause, one line) when it cannot be loaded."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    if uri.startswith(STORE_SCHEMES):
        try:
            registry.check_readable(tracking_uri)   # nothing written, no minutes of retries
        except ThemetuneError as exc:
            raise TrackingStoreError(registry.first_line(exc)) from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with _lock, tempfile.TemporaryDirectory(prefix="themetune-model-") as folder:
        try:
            # Downloaded with an explicit store: a models:/ URI would otherwise be
            # resolved against the process's global tracking URI.
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=_concrete_uri(uri, tracking_uri), dst_path=folder,
                tracking_uri=tracking_uri,
                registry_uri=registry.registry_uri(tracking_uri))
            with _shipped_code_only() as shipped:
                pyfunc = mlflow.pyfunc.load_model(path)
        except (MlflowException, OSError) as exc:
            raise TrackingStoreError(registry.first_line(exc)) from None
    # The weights were read into memory by load_context: the folder is no longer needed.
    module = shipped.get(f"{SHIPPED_PACKAGE}.pyfunc")
    error = getattr(module, "UnreadableImageError", None)
    return LoadedModel(pyfunc, error if isinstance(error, type) else ValueError)


def _concrete_uri(uri: str, tracking_uri: str) -> str:
    """A models:/ URI (NAME@ALIAS, NAME/VERSION, a logged model's id) as the location of
    its files, looked up in `tracking_uri`. MLflow's own lookup ignores the store it is
    given and asks the process's global one, which with none set is ./mlflow.db: a model
    read from another store, and an empty MLflow database made in the working folder."""
    if not uri.startswith("models:/"):
        return uri
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    root, inner = ModelsArtifactRepository.split_models_uri(uri)
    client = MlflowClient(tracking_uri=tracking_uri,
                          registry_uri=registry.registry_uri(tracking_uri))
    found = get_model_name_and_version(client, root)
    location = (client.get_logged_model(found[0]).artifact_location if len(found) == 1
                else client.get_model_version_download_uri(*found))
    return f"{location.rstrip('/')}/{inner}" if inner else location


@contextmanager
def _shipped_code_only():
    """Inside: no `theme_classifier` module in sys.modules, so that loading imports the
    model's copy. After: the checkout's modules and sys.path as they were; yields the
    modules the model loaded (filled in on the way out)."""
    def ours() -> dict:
        return {name: module for name, module in sys.modules.items()
                if name == SHIPPED_PACKAGE or name.startswith(f"{SHIPPED_PACKAGE}.")}

    checkout, path = ours(), list(sys.path)
    shipped: dict = {}
    for name in checkout:
        del sys.modules[name]
    try:
        yield shipped
    finally:
        shipped.update(ours())
        for name in shipped:
            del sys.modules[name]
        sys.modules.update(checkout)
        sys.path[:] = path   # pyfunc put the model's code/ folder first
