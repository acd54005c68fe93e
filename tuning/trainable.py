"""The function each Ray Tune trial runs: train one ResNet and report every epoch.

The data arrive once per study through Ray's object store (tune.with_parameters), as
uint8 arrays; they move to the trial's device once and stay there, and batches are
normalized and augmented on the device. Nothing here reads the database or decodes
an image, so a worker node needs neither.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ray import tune

from tuning.augment import AugmentSettings, augment_batch
from tuning.data import PreparedData, Split
from tuning.model import build_model
from tuning.params import TrainingParams, params_with_sample

CHECKPOINT_FILE = "checkpoint.pt"
EVAL_BATCH = 512


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial cannot go on."""


@dataclass(frozen=True)
class TrialSettings:
    base: dict[str, Any]          # nested params before sampling
    augments: AugmentSettings | None
    num_classes: int
    in_channels: int
    cpus: float


def pick_device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned this trial, so "cuda" is
    # exactly the device Ray chose; with no GPU assigned, CUDA is hidden.
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(params: TrainingParams, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = params.training
    if t.optimizer == "SGD":
        return torch.optim.SGD(model.parameters(), lr=t.learning_rate, momentum=t.momentum,
                               weight_decay=t.weight_decay)
    if t.optimizer == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=t.learning_rate,
                                 weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)


class DeviceSplit:
    """One split as uint8 on the device, normalized per batch (4x less memory than float)."""

    def __init__(self, split: Split, device: torch.device):
        # Arrays from the object store are read-only; torch wants writable memory.
        self.images = torch.from_numpy(np.array(split.images, copy=True)).to(device)
        self.labels = torch.from_numpy(np.array(split.labels, copy=True)).to(device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the training images, shaped for broadcasting."""
    x = images.float().div_(255)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    return mean, std


def evaluate(model: torch.nn.Module, split: DeviceSplit, mean, std) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH):
            x = (split.images[start:start + EVAL_BATCH].float().div_(255) - mean) / std
            y = split.labels[start:start + EVAL_BATCH]
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
    n = max(len(split), 1)
    return loss_sum.item() / n, correct.item() / n


def train_epoch(model, optimizer, split: DeviceSplit, mean, std, *, batch_size: int,
                augments: AugmentSettings | None, generator: torch.Generator) -> tuple[float, float]:
    model.train()
    device = split.images.device
    order = torch.randperm(len(split), generator=generator).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for start in range(0, len(split), batch_size):
        idx = order[start:start + batch_size]
        if idx.numel() < 2:
            # BatchNorm cannot train on a single image; one leftover image is skipped.
            continue
        x = split.images[idx].float().div_(255)
        if augments is not None:
            # Photometric augments work on [0, 1] values, so they come before normalizing.
            x = augment_batch(x, augments)
        x = (x - mean) / std
        y = split.labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: a .item() per step would sync host and GPU.
        loss_sum += loss.detach() * idx.numel()
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += idx.numel()
    train_loss = loss_sum.item() / max(seen, 1)
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(f"training loss became {train_loss} "
                                 f"(try a lower training.learning_rate)")
    return train_loss, correct.item() / max(seen, 1)


def save_checkpoint(folder: Path, model, optimizer, epoch: int) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch}, folder / CHECKPOINT_FILE)


def load_state_dict(folder: Path) -> dict[str, Any]:
    return torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def train_trial(config: dict[str, Any], *, data: PreparedData, settings: TrialSettings) -> None:
    params = TrainingParams.model_validate(params_with_sample(settings.base, config))
    torch.set_num_threads(max(1, int(settings.cpus)))
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(params.data.seed)
    model = build_model(params.model.name, num_classes=settings.num_classes,
                        in_channels=settings.in_channels, weights=params.model.weights).to(device)
    optimizer = make_optimizer(params, model)
    start_epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state_dict(Path(folder))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])

    train, valid, test = (DeviceSplit(s, device) for s in (data.train, data.valid, data.test))
    mean, std = channel_stats(train.images)
    generator = torch.Generator().manual_seed(params.data.seed + start_epoch)
    node_id = _node_id()
    epochs = params.training.num_epochs
    for epoch in range(start_epoch, epochs):
        train_loss, train_acc = train_epoch(
            model, optimizer, train, mean, std, batch_size=params.training.batch_size,
            augments=settings.augments, generator=generator)
        valid_loss, valid_acc = evaluate(model, valid, mean, std)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                   "train_acc": train_acc, "valid_loss": valid_loss,
                                   "valid_acc": valid_acc, "node_id": node_id}
        if epoch + 1 == epochs:
            metrics["test_loss"], metrics["test_acc"] = evaluate(model, test, mean, std)
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder), model, optimizer, epoch + 1)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except RuntimeError:
        return os.uname().nodename
