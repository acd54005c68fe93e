"""The model a study registers, used the way a team would: through MLflow alone.

One finished study per preprocessing (plain; histogram equalization with patches) is
shared by every test here: parity with the trial's own test metric, loading without
this repository, the registry's alias and tags, `mlflow models serve` and predict.py.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.data import prepare_data
from tuning.study import StudyOutcome, prepare_study, preprocess_settings, run_study
from tuning.tracking import registry, retrying
from tuning.tracking.progress import ProgressDisplay

pytestmark = pytest.mark.ray


@dataclass
class FinishedStudy:
    outcome: StudyOutcome
    plan: object
    tracking_uri: str
    folder: Path

    @property
    def model_name(self) -> str:
        return self.outcome.model_name

    @property
    def champion(self) -> str:
        return f"models:/{self.model_name}@champion"

    def test_split(self) -> tuple[list[str], np.ndarray]:
        """The test split's source image files and their labels, as the trials split them."""
        config = self.plan.config
        data = prepare_data(self.plan.theme, preprocess_settings(config.params),
                            cache_dir=Path(config.infra.cache_dir))
        sources = list(dict.fromkeys(data.test.sources.tolist()))   # unique, in order
        samples = [self.plan.theme.samples[i] for i in sources]
        return [s.path for s in samples], np.array([s.label for s in samples])

    def best_child(self):
        return MlflowClient(self.tracking_uri).get_run(self.outcome.best_run_id)

    def load(self):
        # Both studies register a model of the same name, each in its own store.
        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.pyfunc.load_model(self.champion)

    def predict_files(self, paths: list[str]) -> pd.DataFrame:
        return self.load().predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]}))


def _finish_study(tmp_path_factory, theme, *, name: str, params: dict | None = None,
                  n_trials: int = 2, epochs: int = 2) -> FinishedStudy:
    folder = tmp_path_factory.mktemp(name)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(folder)
        configs = tiny_config_files(folder / "configs", n_trials=n_trials, epochs=epochs,
                                    params=params)
        config = load_study_config(ConfigFiles.in_folder(configs), Overrides(theme_id=theme.id))
        plan = prepare_study(config, theme)
        outcome = run_study(plan, progress=ProgressDisplay(min_interval_s=0))
    return FinishedStudy(outcome=outcome, plan=plan, tracking_uri=uri, folder=folder)


@pytest.fixture(scope="module")
def plain_study(ray_local, tmp_path_factory, digits_theme) -> FinishedStudy:
    return _finish_study(tmp_path_factory, digits_theme, name="plain")


@pytest.fixture(scope="module")
def patch_study(ray_local, tmp_path_factory, digits_theme) -> FinishedStudy:
    """Histogram equalization and 8 px patches of 16 px images (4 per image)."""
    params = {"training": {"run_name": "patches"},
              "data": {"image_size": 16, "channels": 1},
              "preprocessing": {"brightness_correction": {"enabled": True},
                                "patch": {"enabled": True, "size": 8, "stride": 8}}}
    return _finish_study(tmp_path_factory, digits_theme, name="patches", params=params,
                         n_trials=1, epochs=2)


def _assert_parity(study: FinishedStudy, metric: str) -> None:
    paths, labels = study.test_split()
    frame = study.predict_files(paths)
    class_names = study.plan.theme.class_names
    predicted = np.array([class_names.index(label) for label in frame["label"]])
    recorded = study.best_child().data.metrics[metric]
    # The same images through the same preprocessing: at most one may differ, from
    # float rounding between the trial's batches and the model's.
    differing = abs((predicted == labels).sum() - round(recorded * len(labels)))
    assert differing <= 1, (recorded, (predicted == labels).mean())


def test_registered_model_labels_raw_files_as_the_best_trial_measured(plain_study):
    _assert_parity(plain_study, "test_acc")
    child = plain_study.best_child()
    # Without patches the per-image accuracy is the accuracy.
    assert child.data.metrics["test_image_acc"] == child.data.metrics["test_acc"]


def test_patch_study_model_answers_per_image_like_test_image_acc(patch_study):
    child = patch_study.best_child()
    assert "test_image_acc" in child.data.metrics
    _assert_parity(patch_study, "test_image_acc")
    paths, _ = patch_study.test_split()
    frame = patch_study.predict_files(paths[:3])
    assert len(frame) == 3   # one answer per image, not per patch
    description = MlflowClient(patch_study.tracking_uri).get_registered_model(
        patch_study.model_name).description
    assert "histogram-equalized" in description and "patches" in description


def test_model_output_columns_and_inputs_it_accepts(plain_study, tmp_path):
    from PIL import Image

    class_names = list(plain_study.plan.theme.class_names)
    paths, _ = plain_study.test_split()
    gray = Path(paths[0]).read_bytes()
    rgba, jpeg = tmp_path / "big.png", tmp_path / "photo.jpg"
    Image.new("RGBA", (640, 480), (200, 10, 10, 128)).save(rgba)
    Image.new("RGB", (300, 200), (10, 200, 10)).save(jpeg, quality=90)
    cells = [gray, rgba.read_bytes(), jpeg.read_bytes()]
    model = plain_study.load()
    frame = model.predict(pd.DataFrame({"image": cells}))
    assert list(frame.columns) == ["label", "probability", *class_names, "error"]
    assert (frame["error"] == "").all()
    assert set(frame["label"]) <= set(class_names)
    probabilities = frame[class_names].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(frame["probability"], probabilities.max(axis=1))
    # Base64 text (MLflow's JSON form of binary) gives the same answer as the bytes.
    as_text = model.predict(pd.DataFrame({"image": [base64.b64encode(c).decode() for c in cells]}))
    pd.testing.assert_frame_equal(frame, as_text)
    # A bad row does not cost the batch (tests/tuning/test_hardening_model.py).
    mixed = model.predict(pd.DataFrame({"image": [gray, b"not an image"]}))
    assert mixed["label"][0] == frame["label"][0] and mixed["label"][1] == ""
    assert mixed["error"][1].startswith("row 1: ")


def test_registry_champion_alias_tags_signature_and_example(plain_study):
    client = MlflowClient(plain_study.tracking_uri)
    outcome = plain_study.outcome
    champion = client.get_model_version_by_alias(plain_study.model_name, "champion")
    assert str(champion.version) == outcome.model_version
    assert champion.tags["parent_run_id"] == outcome.parent_run_id
    assert champion.tags["best_run_id"] == outcome.best_run_id
    assert champion.tags["themetune.study_name"] == plain_study.plan.study_name
    assert champion.tags["themetune.theme_name"] == plain_study.plan.theme.name
    assert champion.tags["themetune.metric"] == "test_acc"
    assert float(champion.tags["themetune.value"]) == pytest.approx(outcome.best_value)
    for name in plain_study.plan.theme.class_names:
        assert name in champion.description
    assert "standardized with the training split's mean" in champion.description
    mlflow.set_tracking_uri(plain_study.tracking_uri)
    info = mlflow.models.get_model_info(plain_study.champion)
    assert info.signature.inputs.input_names() == ["image"]
    assert info.signature.outputs.input_names()[:2] == ["label", "probability"]
    assert info.saved_input_example_info is not None


def test_champion_moves_only_for_a_better_value(plain_study):
    mlflow.set_tracking_uri(plain_study.tracking_uri)   # mlflow.register_model's store
    client = retrying.RetryingClient(MlflowClient(plain_study.tracking_uri))
    outcome = plain_study.outcome
    source = client.get_model_version_by_alias(plain_study.model_name, "champion").source
    common = dict(model_uri=source, model_name=plain_study.model_name,
                  tags={}, description="d", metric="test_acc", direction="maximize")
    worse = registry.register_best(client, value=outcome.best_value - 0.5, **common)
    assert not worse.moved and worse.champion_version == outcome.model_version
    assert "alias left in place" in worse.reason
    other_metric = registry.register_best(client, **{**common, "metric": "test_loss",
                                                     "direction": "minimize"}, value=0.0)
    assert not other_metric.moved and "not comparable" in other_metric.reason
    better = registry.register_best(client, value=outcome.best_value + 0.5, **common)
    assert better.moved
    assert str(client.get_model_version_by_alias(plain_study.model_name, "champion").version) == \
        better.version
    # Put the champion back for the tests that read it.
    client.set_registered_model_alias(plain_study.model_name, "champion", outcome.model_version)


def test_a_parent_run_registers_one_version_even_when_its_bookkeeping_is_redone(plain_study):
    """A resume that redoes a dead driver's bookkeeping after it had registered."""
    mlflow.set_tracking_uri(plain_study.tracking_uri)
    client = retrying.RetryingClient(MlflowClient(plain_study.tracking_uri))
    outcome = plain_study.outcome
    before = client.search_model_versions(f"name = '{plain_study.model_name}'")
    again = registry.register_best(
        client, model_uri=before[0].source, model_name=plain_study.model_name,
        tags={"parent_run_id": outcome.parent_run_id}, description="d", metric="test_acc",
        direction="maximize", value=outcome.best_value)
    assert again.version == str(outcome.model_version)
    after = client.search_model_versions(f"name = '{plain_study.model_name}'")
    assert len(after) == len(before)


def test_model_loads_and_predicts_without_this_repository(plain_study, tmp_path):
    paths, _ = plain_study.test_split()
    script = f"""
import sys, json
import mlflow, pandas as pd
mlflow.set_tracking_uri({plain_study.tracking_uri!r})
model = mlflow.pyfunc.load_model({plain_study.champion!r})
frame = model.predict(pd.DataFrame({{"image": [open(p, "rb").read() for p in {paths[:4]!r}]}}))
print(json.dumps({{"labels": frame["label"].tolist(), "path": sys.path,
                  "tuning": "tuning" in sys.modules, "data_access": "data_access" in sys.modules,
                  "django": "django" in sys.modules}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # "" is the subprocess's working directory, tmp_path.
    assert not any((tmp_path / p).resolve() == ROOT for p in result["path"]), result["path"]
    assert not (result["tuning"] or result["data_access"] or result["django"])
    expected = plain_study.predict_files(paths[:4])["label"].tolist()
    assert result["labels"] == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_base64_images(plain_study, tmp_path):
    paths, _ = plain_study.test_split()
    paths = paths[:3]
    port = _free_port()
    # The scoring server runs `uvicorn` from PATH, as in an activated venv.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": plain_study.tracking_uri,
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    mlflow_cli = str(Path(bin_dir) / "mlflow")
    server = subprocess.Popen(
        [mlflow_cli, "models", "serve", "-m", plain_study.champion, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=open(tmp_path / "serve.log", "w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        body = {"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(Path(p).read_bytes()).decode()] for p in paths]}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    rows = answer["predictions"]
    expected = plain_study.predict_files(paths)
    assert [r["label"] for r in rows] == expected["label"].tolist()
    assert [r["probability"] for r in rows] == pytest.approx(expected["probability"].tolist(),
                                                             abs=1e-6)


def _wait_for(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer in {timeout_s} s: {log.read_text()[-2000:]}")


def test_predict_cli_labels_files_and_folders_and_names_the_unreadable(plain_study, tmp_path):
    paths, _ = plain_study.test_split()
    folder = tmp_path / "to_label"
    folder.mkdir()
    for p in paths[:3]:
        (folder / Path(p).name).write_bytes(Path(p).read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    env = {**os.environ, "MLFLOW_TRACKING_URI": plain_study.tracking_uri}
    out = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--model",
                          plain_study.champion, str(folder), paths[3], "--csv",
                          str(tmp_path / "labels.csv")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [line.split("\t") for line in out.stdout.strip().splitlines()]
    assert len(lines) == 4
    expected = plain_study.predict_files([line[0] for line in lines])
    assert [line[1] for line in lines] == expected["label"].tolist()
    assert all(0 < float(line[2]) <= 1 for line in lines)
    assert out.stderr.strip().splitlines() == [f"error: {folder / 'broken.png'}: "
                                               f"not a readable image file"]
    assert "Traceback" not in out.stderr
    table = pd.read_csv(tmp_path / "labels.csv")
    assert list(table.columns) == ["path", "label", "probability",
                                   *plain_study.plan.theme.class_names]
    assert len(table) == 4

    missing = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--model",
                              f"models:/{plain_study.model_name}_nope@champion", paths[0]],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "cannot load model" in missing.stderr and "Traceback" not in missing.stderr
