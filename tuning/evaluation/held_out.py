"""The chosen model scored once on the test split, at the end of a study.

The best trial's network (from its checkpoint) predicts the test split as the study
prepared it (the resident arrays or the shards: nothing is decoded again), one answer
per source image as the shipped model gives (patch probabilities averaged). With a
valid_* study metric the test split took no part in choosing the model, so these
figures are a held-out estimate of it.
"""

from __future__ import annotations

import numpy as np
import torch

from theme_classifier.network import build_network
from theme_classifier.preprocess import network_input
from tuning import storage
from tuning.data import TrialData
from tuning.data.theme import ThemeSpec
from tuning.evaluation import scores
from tuning.tracking.recording import StudyEvaluation
from tuning.trial.batches import stats_from_sums
from tuning.trial.trainable import CHECKPOINT_FILE, eval_batch_size, open_splits, pick_device

MAX_MISCLASSIFIED = 24


def read_checkpoint(storage_path: str, checkpoint_path: str) -> dict:
    """A trial's checkpoint, read through the filesystem of ray.storage_path as Tune
    wrote it ("bucket/key" on S3, a plain path on a local disk)."""
    data = storage.read_on_storage(storage_path,
                                   f"{checkpoint_path.rstrip('/')}/{CHECKPOINT_FILE}")
    return storage.torch_load(data)


def evaluate_best(data: TrialData, theme: ThemeSpec, *, trial_number: int, checkpoint: dict,
                  architecture: str) -> StudyEvaluation:
    """The network of `checkpoint` (as save_checkpoint writes it) on `data`'s test split."""
    device = pick_device()
    mean, std = _normalization(checkpoint, data)
    network = build_network(architecture, num_classes=theme.num_classes,
                            in_channels=len(mean))
    network.load_state_dict(checkpoint["model"])
    network = network.to(device).eval()
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).reshape(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).reshape(shape)
    test = open_splits(data, device)[2]
    try:
        probabilities = _probabilities(network, test, mean_t, std_t)
    finally:
        getattr(test, "close", lambda: None)()
    per_image = test.patches_per_image
    probabilities = probabilities.reshape(-1, per_image, theme.num_classes).mean(axis=1)
    sources = np.asarray(data.test.sources)[::per_image]
    labels = np.asarray(data.test.labels)[::per_image]
    return summarize(theme, trial_number=trial_number, sources=sources, labels=labels,
                     probabilities=probabilities)


def _normalization(checkpoint: dict, data: TrialData) -> tuple[list[float], list[float]]:
    """The mean and std the trial trained with: in its checkpoint, or (checkpoints from
    before they were saved there) from the resident train split's pixel sums."""
    if "mean" in checkpoint and "std" in checkpoint:
        return list(checkpoint["mean"]), list(checkpoint["std"])
    mean, std = stats_from_sums(data.train_sums)
    return mean.flatten().tolist(), std.flatten().tolist()


def _probabilities(network, split, mean, std) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for images, _ in split.batches(None, eval_batch_size(split.side)):
            out.append(torch.softmax(network(network_input(images, mean, std)), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)


def summarize(theme: ThemeSpec, *, trial_number: int, sources: np.ndarray, labels: np.ndarray,
              probabilities: np.ndarray) -> StudyEvaluation:
    """The evaluation of per-image `probabilities` for the theme's samples `sources`."""
    names = theme.class_names
    predicted = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, np.int64)
    confusion = scores.confusion_matrix(labels, predicted, len(names))
    stats = scores.per_class(confusion)
    per_class = [{"class": name, "precision": float(stats["precision"][c]),
                  "recall": float(stats["recall"][c]), "f1": float(stats["f1"][c]),
                  "support": int(stats["support"][c])} for c, name in enumerate(names)]
    metrics = {"test_acc": scores.accuracy(confusion),
               "test_balanced_acc": scores.balanced_accuracy(confusion),
               "test_macro_f1": scores.macro_f1(confusion)}
    return StudyEvaluation(trial_number=trial_number, split="test", class_names=tuple(names),
                           confusion=confusion.tolist(), per_class=per_class, metrics=metrics,
                           misclassified=_misclassified(theme, sources, labels, predicted,
                                                        probabilities))


def _misclassified(theme: ThemeSpec, sources, labels, predicted, probabilities) -> list[dict]:
    """The most confident mistakes first: the ones a team most needs to see."""
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]] if len(wrong) else np.zeros(0)
    order = wrong[np.argsort(-confidence, kind="stable")][:MAX_MISCLASSIFIED]
    names = theme.class_names
    return [{"path": theme.samples[int(sources[i])].path, "true": names[int(labels[i])],
             "predicted": names[int(predicted[i])],
             "confidence": float(probabilities[i, predicted[i]])} for i in order]
