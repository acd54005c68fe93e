"""The MLflow pyfunc a study registers: a DataFrame of encoded images in, labels out.

    model = mlflow.pyfunc.load_model("models:/<theme>_model@champion")
    model.predict(pd.DataFrame({"image": [open("a.png", "rb").read()]}))

returns one row per image: `label` (the class name), `probability` (of that label),
one column per class name and `error`. Rows are independent: a row that is not a
readable image (None, bad base64, a broken file) gets an empty label, probabilities of
0 and its reason in `error` ("row 3: ..."); the others are labelled as usual, with an
empty `error`. A batch with no readable row raises NoReadableImageError, which
`mlflow models serve` answers with a 400 naming each row's reason.

Every request format of MLflow's scoring server carries the image column as base64
text (`dataframe_split`, `dataframe_records`, `instances`, `inputs`), also as
`{"b64": "..."}` (TF serving's form of binary data). The signature declares the column
as a string, not binary: for a binary column the server decodes base64 itself and
refuses the whole batch at the first null or bad cell, and for `instances` and `inputs`
it passes the text's bytes undecoded. In process, bytes are taken as they are.

`model.unwrap_python_model().network` is the bare torch network, for those who want it
without the preprocessing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from theme_classifier.network import build_network
from theme_classifier.preprocess import Preprocessing, cut_patches, decode, equalize, network_input

NETWORK_ARTIFACT = "network"          # state_dict of the trained network (torch.save)
METADATA_ARTIFACT = "classifier"      # classifier.json: architecture, classes, preprocessing
INPUT_COLUMN = "image"
ERROR_COLUMN = "error"
# Rows named in a NoReadableImageError's message, at most.
MAX_ROWS_NAMED = 20
# How MLflow's `instances`/`inputs` parsing turns a JSON {"b64": "..."} and a null into
# text for a string column: str() of the dict, and "None".
_B64_DICT_TEXT = re.compile(r"""^\{\s*['"]b64['"]\s*:\s*['"]([^'"]*)['"]\s*\}$""")
_NULL_TEXT = "None"
_BUFFER_NAME = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
# Images per forward pass: bounds memory for a request of many large patches.
BATCH = 256


class UnreadableImageError(ValueError):
    """An input cell is not an image file this model can decode."""


class NoReadableImageError(MlflowException, UnreadableImageError):
    """No row of the batch is a readable image: nothing to answer. An MlflowException
    of INVALID_PARAMETER_VALUE, so that the scoring server answers 400 with this message
    (and no stack trace); an UnreadableImageError for callers that catch that."""

    def __init__(self, reasons: list[str]):
        shown = "; ".join(reasons[:MAX_ROWS_NAMED])
        more = f"; and {len(reasons) - MAX_ROWS_NAMED} more" if len(reasons) > MAX_ROWS_NAMED else ""
        super().__init__(f"no row of the batch is a readable image ({shown}{more}). Send "
                         f"encoded image files (PNG, JPEG, BMP, ...) in the column "
                         f"{INPUT_COLUMN!r}, as bytes or base64 text.",
                         error_code=INVALID_PARAMETER_VALUE)


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
        decoded: list[np.ndarray] = []
        readable: list[int] = []
        errors = [""] * len(cells)
        for row, cell in enumerate(cells):
            try:
                decoded.append(self._decode(_as_bytes(cell), row))
                readable.append(row)
            except UnreadableImageError as exc:
                errors[row] = str(exc)
        if cells and not readable:
            raise NoReadableImageError(errors)
        p = self.preprocessing
        images = np.stack(decoded) if decoded else \
            np.zeros((0, p.channels, p.image_size, p.image_size), np.uint8)
        probabilities = np.zeros((len(cells), len(self.class_names)), np.float32)
        probabilities[readable] = self.probabilities(images)
        return self._frame(probabilities, readable, errors)

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
        if isinstance(cell, UnreadableImageError):
            raise UnreadableImageError(f"row {row}: {cell}")
        try:
            return decode(cell, size=p.image_size, channels=p.channels)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            # Pillow names the buffer it was given ("<_io.BytesIO object at 0x...>").
            reason = _BUFFER_NAME.sub("", str(exc).splitlines()[0][:200] if str(exc) else "")
            raise UnreadableImageError(
                f"row {row}: not a readable image file ({type(exc).__name__}: "
                f"{reason})") from None
        except Exception as exc:   # a decoder's own failure on hostile bytes: still one row
            raise UnreadableImageError(
                f"row {row}: not a readable image file ({type(exc).__name__})") from None

    def _frame(self, probabilities: np.ndarray, readable: list[int],
               errors: list[str]) -> pd.DataFrame:
        best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
        labels = [""] * len(best)
        for row in readable:
            labels[row] = self.class_names[best[row]]
        frame = pd.DataFrame({
            "label": labels,
            "probability": probabilities[np.arange(len(best)), best].astype(np.float64)})
        for index, name in enumerate(self.class_names):
            frame[name] = probabilities[:, index].astype(np.float64)
        # Set last and by position: a class may be named "error" too.
        frame.insert(len(frame.columns), ERROR_COLUMN, errors, allow_duplicates=True)
        return frame


def _image_cells(model_input) -> list:
    """The input's cells, one per row, as they came (checked row by row later)."""
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise MlflowException(f"the input needs a column {INPUT_COLUMN!r} of encoded "
                                  f"image files; got columns {list(model_input.columns)}",
                                  error_code=INVALID_PARAMETER_VALUE)
        return model_input[INPUT_COLUMN].tolist()
    if isinstance(model_input, dict):
        if INPUT_COLUMN not in model_input:
            raise MlflowException(f"the input needs a key {INPUT_COLUMN!r} of encoded image "
                                  f"files; got keys {list(model_input)[:10]}",
                                  error_code=INVALID_PARAMETER_VALUE)
        column = model_input[INPUT_COLUMN]
        if isinstance(column, np.ndarray):
            return column.reshape(-1).tolist() if column.ndim else [column.item()]
        return list(column) if isinstance(column, (list, tuple)) else [column]
    if isinstance(model_input, np.ndarray):
        return model_input.reshape(-1).tolist()
    return list(model_input)


def _as_bytes(cell) -> bytes | UnreadableImageError:
    """A cell as encoded image bytes, or the reason it is none. Bytes as they are; text
    as base64 (MLflow's JSON form of a binary column, which its scoring server does not
    always decode: mlflow#11170); {"b64": text} (TF serving's binary form) likewise."""
    if isinstance(cell, dict) and set(cell) == {"b64"}:
        cell = cell["b64"]
    if isinstance(cell, (bytes, bytearray, memoryview)):
        data = bytes(cell)
        return data if data else UnreadableImageError("the image is empty (0 bytes)")
    if isinstance(cell, str):
        if cell == _NULL_TEXT:
            return UnreadableImageError("no image (the cell is empty)")
        wrapped = _B64_DICT_TEXT.match(cell.strip())
        cell = wrapped.group(1) if wrapped else cell
        try:
            data = base64.b64decode("".join(cell.split()), validate=True)
        except (binascii.Error, ValueError):
            return UnreadableImageError("an image given as text must be base64 "
                                        "(A-Z, a-z, 0-9, +, /, = padding)")
        return data if data else UnreadableImageError("the image is empty (0 bytes)")
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return UnreadableImageError("no image (the cell is empty)")
    return UnreadableImageError(f"an image must be bytes or base64 text, not "
                                f"{type(cell).__name__}")
