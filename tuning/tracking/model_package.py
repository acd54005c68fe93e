"""A trial's checkpoint -> the MLflow model a team deploys (theme_classifier's pyfunc).

The model carries the network's weights, the class names and every preprocessing step
the study trained with (theme_classifier.preprocess.Preprocessing), and the code of
`theme_classifier` itself, so that MLflow alone can load, serve and predict with it.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from packaging.version import Version
from PIL import Image

import theme_classifier
from theme_classifier.preprocess import Preprocessing, decode
from theme_classifier.pyfunc import (
    ERROR_COLUMN,
    INPUT_COLUMN,
    METADATA_ARTIFACT,
    NETWORK_ARTIFACT,
    ThemeClassifier,
)
from tuning.tracking import retrying

CODE_PATH = str(Path(theme_classifier.__file__).resolve().parent)
NETWORK_FILE = "network.pt"
METADATA_FILE = "classifier.json"
# The tag MLflow's UI shows and edits as a run's or a logged model's description.
NOTE_TAG = "mlflow.note.content"
# What the shipped code imports, and MLflow to load it.
REQUIRED_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "pandas", "mlflow")
# What mlflow.pyfunc.log_model records as the flavor of a PythonModel.
PYFUNC_FLAVOR = "pyfunc.CustomPythonModel"


def pinned_requirements() -> list[str]:
    """REQUIRED_PACKAGES at the versions this process trains with, so that a model
    deployed later runs on what it was measured with. A local label (torch's +cpu,
    +cu121) is dropped: PyPI knows none, and the wheel's index decides it."""
    return [f"{name}=={Version(version(name)).public}" for name in REQUIRED_PACKAGES]


def preprocessing_of(settings, *, mean: list[float], std: list[float]) -> Preprocessing:
    """The shipped preprocessing for a study's data.PreprocessSettings."""
    return Preprocessing(image_size=settings.image_size, channels=settings.channels,
                         equalize=settings.brightness is not None,
                         patch_size=settings.patch_size, patch_stride=settings.stride,
                         mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


def signature(class_names: tuple[str, ...]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    outputs = [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "probability")]
    outputs += [ColSpec(DataType.double, name) for name in class_names]
    outputs.append(ColSpec(DataType.string, ERROR_COLUMN))   # "" for a labelled row
    # A string column, not binary: with binary, MLflow's scoring server decodes base64
    # itself, refusing the whole batch at one null or bad cell, and for `instances` and
    # `inputs` passes the text undecoded (theme_classifier.pyfunc decodes every form).
    return ModelSignature(inputs=Schema([ColSpec(DataType.string, INPUT_COLUMN)]),
                          outputs=Schema(outputs))


def input_example(image_path: str, preprocessing: Preprocessing) -> pd.DataFrame:
    """One of the theme's images, shrunk to the model's input size and PNG-encoded: a
    real input that keeps the model's folder small."""
    array = decode(image_path, size=preprocessing.image_size, channels=preprocessing.channels)
    image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return pd.DataFrame({INPUT_COLUMN: [buffer.getvalue()]})


def log_classifier(run_id: str, *, name: str, network_state: dict, architecture: str,
                   class_names: tuple[str, ...], preprocessing: Preprocessing,
                   example_image: str, params: dict | None = None,
                   note: str | None = None, validate: bool = True) -> str:
    """Log the pyfunc model into a run; returns the model URI to register. `params` and
    `note` (the description MLflow's UI shows) go on the logged model itself, so that
    MLflow 3's Models tab tells one model from another; MLflow adds the run's params.

    `validate`: MLflow loads the model back and predicts its input example, about half
    of the cost of logging (1.2 of 2.6 s for ResNet18 on 2 busy cores, 2026-12-02), and
    only warns when that fails. A trial's model is logged on Tune's event loop, where
    that time holds up every other trial: it is validated once, as the study's best
    model, which has the same code and format."""
    return retrying.call(_log_classifier, run_id, name=name, network_state=network_state,
                         architecture=architecture, class_names=class_names,
                         preprocessing=preprocessing, example_image=example_image,
                         params=params, note=note, validate=validate)


def model_id_of(model_uri: str) -> str:
    """The logged model's id in a `models:/<id>` URI (what log_classifier returns)."""
    return model_uri.removeprefix("models:/")


def _log_classifier(run_id: str, *, name: str, network_state: dict, architecture: str,
                    class_names: tuple[str, ...], preprocessing: Preprocessing,
                    example_image: str, params: dict | None, note: str | None,
                    validate: bool) -> str:
    import mlflow
    from mlflow.models import Model

    # MLflow logs an INFO line per saved model and warns about the example's conversion.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        network_file = Path(folder) / NETWORK_FILE
        torch.save(network_state, network_file)
        metadata_file = Path(folder) / METADATA_FILE
        metadata_file.write_text(json.dumps({
            "architecture": architecture, "class_names": list(class_names),
            "preprocessing": preprocessing.to_dict()}, indent=1))
        # The run made active (not only named) puts the model in the run's experiment.
        with mlflow.start_run(run_id=run_id, nested=True):
            # mlflow.pyfunc.log_model's own call, with the switch it does not pass on.
            info = Model.log(
                artifact_path=None, flavor=_PyfuncFlavor, flavor_name=PYFUNC_FLAVOR,
                validate_serving_input=validate, name=name, python_model=ThemeClassifier(),
                artifacts={NETWORK_ARTIFACT: str(network_file),
                           METADATA_ARTIFACT: str(metadata_file)},
                code_paths=[CODE_PATH], signature=signature(class_names),
                input_example=input_example(example_image, preprocessing),
                pip_requirements=pinned_requirements(),
                params={"architecture": architecture, **(params or {})},
                tags={NOTE_TAG: note} if note else None)
    return info.model_uri


class _PyfuncFlavor:
    """mlflow.pyfunc as Model.log's flavor. Model.log reads validate_serving_input, then
    hands every keyword on to the flavor's save_model, which pyfunc's refuses."""

    @staticmethod
    def save_model(*, validate_serving_input: bool = True, **kwargs):
        import mlflow.pyfunc

        return mlflow.pyfunc.save_model(**kwargs)


def description(class_names: tuple[str, ...], preprocessing: Preprocessing) -> str:
    return (f"Classifies an encoded image file (PNG, JPEG, BMP, ...; any size, grayscale, "
            f"RGB or RGBA) into one of {len(class_names)} classes: "
            f"{', '.join(class_names)}. Input: a DataFrame column `{INPUT_COLUMN}` of file "
            f"bytes (or base64 text). Output: `label`, `probability`, one probability "
            f"column per class and `{ERROR_COLUMN}`: a row that is not a readable image "
            f"gets an empty label and its reason there, the others are still labelled. "
            f"Preprocessing inside the model: "
            f"{preprocessing.describe()}")


def checkpoint_stats(state: dict, train_images: np.ndarray | None) -> tuple[list[float], list[float]]:
    """The normalization a trial trained with: saved in its checkpoint, or recomputed
    from the training split for checkpoints written before they were saved."""
    if "mean" in state and "std" in state:
        return list(state["mean"]), list(state["std"])
    if train_images is None:
        raise ValueError("this checkpoint carries no normalization statistics")
    from tuning.trial.trainable import channel_stats

    mean, std = channel_stats(torch.from_numpy(np.ascontiguousarray(train_images)))
    return mean.flatten().tolist(), std.flatten().tolist()
