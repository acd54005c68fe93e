"""The shipped model's surfaces hardened (issue 21, items 5 and 6): rows are independent
(a bad one gets an empty label and its reason in `error`, the others are labelled), a
batch with no readable row is a clear refusal, and every request format of MLflow's
scoring server carries a base64 PNG. Through a real `mlflow models serve`.

The model is logged from an untrained network (model_package.log_classifier, as a study
logs its best trial): what is checked here is the packaging, not the accuracy, and no
study needs to train for it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import ROOT
from theme_classifier.network import build_network
from theme_classifier.preprocess import Preprocessing

CLASSES = ("cat", "dog")


def _png(color: int = 128, size: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = _png()
GOOD_B64 = base64.b64encode(GOOD).decode()


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory) -> dict:
    from tuning.tracking.model_package import log_classifier

    folder = tmp_path_factory.mktemp("hardening_model")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    example = folder / "example.png"
    example.write_bytes(GOOD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(folder)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("hardening")).info.run_id
        network = build_network("ResNet18", num_classes=len(CLASSES), in_channels=1)
        model_uri = log_classifier(run_id, name="model", network_state=network.state_dict(),
                                   architecture="ResNet18", class_names=CLASSES,
                                   preprocessing=Preprocessing(16, 1, False, mean=(0.5,),
                                                               std=(0.25,)),
                                   example_image=str(example))
    return {"uri": model_uri, "tracking_uri": uri, "folder": folder}


@pytest.fixture(scope="module")
def model(logged_model):
    mlflow.set_tracking_uri(logged_model["tracking_uri"])
    return mlflow.pyfunc.load_model(logged_model["uri"])


def test_rows_are_independent_and_each_bad_row_says_why(model):
    cells = [GOOD, None, b"not an image", "!!! not base64 !!!", b"", GOOD_B64,
             {"b64": GOOD_B64}, GOOD[:40], 7]
    frame = model.predict(pd.DataFrame({"image": cells}))
    assert list(frame.columns) == ["label", "probability", *CLASSES, "error"]
    assert len(frame) == len(cells)
    good_rows, bad_rows = [0, 5, 6], [1, 2, 3, 4, 7, 8]
    for row in good_rows:
        assert frame["label"][row] in CLASSES and frame["error"][row] == "", frame.iloc[row]
    for row in bad_rows:
        assert frame["label"][row] == "" and frame["probability"][row] == 0.0
        assert frame["error"][row].startswith(f"row {row}: "), frame["error"][row]
    assert "empty" in frame["error"][1] and "base64" in frame["error"][3]
    assert "0x" not in "".join(frame["error"])   # no Python object addresses
    # A good row answers as it does alone.
    alone = model.predict(pd.DataFrame({"image": [GOOD]}))
    assert frame["probability"][0] == pytest.approx(alone["probability"][0], abs=1e-6)


def test_a_batch_with_no_readable_row_is_refused_naming_each_row(model):
    from theme_classifier.pyfunc import UnreadableImageError

    with pytest.raises(MlflowException) as refused:
        model.predict(pd.DataFrame({"image": [None, b"junk"]}))
    assert isinstance(refused.value, UnreadableImageError)   # what older callers catch
    assert refused.value.get_http_status_code() == 400
    message = refused.value.message
    assert "no row of the batch is a readable image" in message
    assert "row 0: " in message and "row 1: " in message


def test_signature_declares_the_error_column(logged_model):
    mlflow.set_tracking_uri(logged_model["tracking_uri"])
    info = mlflow.models.get_model_info(logged_model["uri"])
    assert info.signature.outputs.input_names() == ["label", "probability", *CLASSES, "error"]
    assert info.signature.inputs.input_names() == ["image"]


# -- a real `mlflow models serve` ------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(logged_model):
    port = _free_port()
    folder = logged_model["folder"]
    bin_dir = str(Path(sys.executable).parent)   # uvicorn from the venv, as activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged_model["tracking_uri"],
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    log = folder / "serve.log"
    proc = subprocess.Popen(
        [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", logged_model["uri"],
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve never answered: {log.read_text()[-2000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)


def _post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


FORMATS = {
    "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[GOOD_B64]]}},
    "dataframe_records": {"dataframe_records": [{"image": GOOD_B64}]},
    "instances_records": {"instances": [{"image": GOOD_B64}]},
    "instances_b64": {"instances": [{"image": {"b64": GOOD_B64}}]},
    "instances_values": {"instances": [GOOD_B64]},
    "inputs_columns": {"inputs": {"image": [GOOD_B64]}},
    "inputs_b64": {"inputs": {"image": [{"b64": GOOD_B64}]}},
    "inputs_records": {"inputs": [{"image": GOOD_B64}]},
    "inputs_values": {"inputs": [GOOD_B64]},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FORMATS))
def test_serve_labels_a_base64_png_in_every_request_format(server, model, name):
    status, body = _post(server, FORMATS[name])
    assert status == 200, body
    rows = json.loads(body)["predictions"]
    expected = model.predict(pd.DataFrame({"image": [GOOD]}))
    assert [r["label"] for r in rows] == expected["label"].tolist()
    assert rows[0]["error"] == ""


@pytest.mark.slow
@pytest.mark.parametrize("body", [
    {"dataframe_split": {"columns": ["image"], "data": [[GOOD_B64], [None], ["abc"],
                                                          ["%%%"]]}},
    {"dataframe_records": [{"image": GOOD_B64}, {"image": None}, {"image": "abc"},
                           {"image": "%%%"}]},
    {"inputs": {"image": [GOOD_B64, None, "abc", "%%%"]}},
    {"instances": [{"image": GOOD_B64}, {"image": None}, {"image": "abc"},
                   {"image": {"b64": "%%%"}}]},
], ids=["dataframe_split", "dataframe_records", "inputs", "instances"])
def test_serve_labels_the_good_rows_of_a_batch_with_bad_ones(server, body):
    status, text = _post(server, body)
    assert status == 200, text
    rows = json.loads(text)["predictions"]
    assert len(rows) == 4
    assert rows[0]["label"] in CLASSES and rows[0]["error"] == ""
    for index in (1, 2, 3):
        assert rows[index]["label"] == "" and rows[index]["error"].startswith(f"row {index}: ")


@pytest.mark.slow
@pytest.mark.parametrize("body", [
    {"dataframe_split": {"columns": ["image"], "data": [[None], ["abc"]]}},
    {"inputs": {"image": ["%%%"]}},
    {"instances": [{"image": {"b64": base64.b64encode(b"not a png").decode()}}]},
], ids=["dataframe_split", "inputs", "instances"])
def test_serve_refuses_a_batch_with_no_readable_row_with_a_clear_400(server, body):
    status, text = _post(server, body)
    assert status == 400, text
    answer = json.loads(text)
    assert "no row of the batch is a readable image" in answer["message"]
    assert "stack_trace" not in answer and "Traceback" not in text and 'File "' not in text


# -- predict.py, when no file of a batch is readable -----------------------------------

@pytest.mark.slow
def test_predict_cli_with_no_readable_file_exits_2_naming_each(logged_model, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged_model["tracking_uri"]}
    for paths, expected in (([str(garbage)], [f"error: {garbage}: not a readable image file"]),
                            # read_bytes fails (EIO) even for root: no cell reaches the model
                            (["/proc/self/mem"], ["error: /proc/self/mem: cannot read"])):
        out = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--model",
                              logged_model["uri"], *paths], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2, out.stderr[-3000:]
        assert "Traceback" not in out.stderr and len(lines) == len(expected), out.stderr[-3000:]
        assert all(line.startswith(prefix) for line, prefix in zip(lines, expected)), lines
        assert out.stdout.strip() == ""
