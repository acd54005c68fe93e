"""The MLflow pyfunc a study registers: a DataFrame of encoded images in, labels out.

    model = mlflow.pyfunc.load_model("models:/<theme>_model@champion")
    model.predict(pd.DataFrame({"image": [open("a.png", "rb").read()]}))

returns one row per image: `label` (the class name), `probability` (of that label)
and one column per class name. `model.unwrap_python_model().network` is the bare
torch network, for those who want it without the preprocessing.
"""

from __future__ import annotations

import base64
import binascii
import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from theme_classifier.network import build_network
from theme_classifier.preprocess import (Preprocessing, cut_patches, decode, equalize,
                                         network_input)

NETWORK_ARTIFACT = "network"          # state_dict of the trained network (torch.save)
METADATA_ARTIFACT = "classifier"      # classifier.json: architecture, classes, preprocessing
INPUT_COLUMN = "image"
# Images per forward pass: bounds memory for a request of many large patches.
BATCH = 256


class UnreadableImageError(ValueError):
    """An input cell is not an image file this model can decode."""


class ThemeClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        with open(context.artifacts[METADATA_ARTIFACT]) as f:
            meta = json.load(f)
        self.class_names: list[str] = list(meta["class_names"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        network = build_network(meta["architecture"], num_classes=len(self.class_names),
                                in_channels=self.preprocessing.channels)
        state = torch.load(context.artifacts[NETWORK_ARTIFACT], map_location="cpu",
                           weights_only=True)
        network.load_state_dict(state)
        self.network = network.to(self.device).eval()
        shape = (1, self.preprocessing.channels, 1, 1)
        self._mean = torch.tensor(self.preprocessing.mean, dtype=torch.float32,
                                  device=self.device).reshape(shape)
        self._std = torch.tensor(self.preprocessing.std, dtype=torch.float32,
                                 device=self.device).reshape(shape)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        cells = _image_cells(model_input)
        images = np.stack([self._decode(cell, row) for row, cell in enumerate(cells)]) \
            if cells else np.zeros((0, self.preprocessing.channels,
                                    self.preprocessing.image_size,
                                    self.preprocessing.image_size), np.uint8)
        probabilities = self.probabilities(images)
        return self._frame(probabilities)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, S, S) resized images -> (N, classes) probabilities."""
        p = self.preprocessing
        if p.equalize and len(images):
            images = equalize(images)
        per_image = 1
        if p.patch_size is not None:
            patches = cut_patches(images, p.patch_size, p.stride)
            per_image = len(patches) // max(len(images), 1)
            images = patches
        out = np.zeros((len(images), len(self.class_names)), np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH]))
                x = network_input(batch.to(self.device), self._mean, self._std)
                out[start:start + BATCH] = torch.softmax(self.network(x), dim=1).cpu().numpy()
        # Patch-trained: one answer per image, the mean of its patches' probabilities.
        return out.reshape(-1, per_image, len(self.class_names)).mean(axis=1)

    def _decode(self, cell, row: int) -> np.ndarray:
        p = self.preprocessing
        try:
            return decode(cell, size=p.image_size, channels=p.channels)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UnreadableImageError(
                f"row {row}: not a readable image file ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None

    def _frame(self, probabilities: np.ndarray) -> pd.DataFrame:
        best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
        frame = pd.DataFrame({
            "label": [self.class_names[i] for i in best],
            "probability": probabilities[np.arange(len(best)), best].astype(np.float64)})
        for index, name in enumerate(self.class_names):
            frame[name] = probabilities[:, index].astype(np.float64)
        return frame


def _image_cells(model_input) -> list:
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs a column {INPUT_COLUMN!r} of encoded image "
                             f"files; got columns {list(model_input.columns)}")
        cells = model_input[INPUT_COLUMN].tolist()
    elif isinstance(model_input, dict):
        cells = list(np.atleast_1d(model_input[INPUT_COLUMN]))
    else:
        cells = list(model_input)
    return [_as_bytes(cell) for cell in cells]


def _as_bytes(cell) -> bytes:
    """Bytes as they are; text as base64, which MLflow's JSON format uses for binary
    columns and its scoring server does not always decode (mlflow#11170)."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, str):
        try:
            return base64.b64decode(cell, validate=False)
        except (binascii.Error, ValueError):
            raise UnreadableImageError("an image given as text must be base64") from None
    raise UnreadableImageError(f"an image must be bytes or base64 text, not "
                               f"{type(cell).__name__}")
