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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ray import tune

from theme_classifier.preprocess import network_input, standardize, to_unit
from tuning.data.augment import AugmentSettings, augment_batch
from tuning.data import PreparedData, Split
from tuning.trial.memory_cap import GIB, TrialOutOfMemoryError, is_out_of_memory, memory_cap
from tuning.trial.model import build_model, freeze_backbone, set_train_mode
from tuning.config.params import TrainingParams, params_with_sample

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
    memory_gb: float | None = None   # resources.memory_gb: the trial's cap on host memory
    # torchvision's ImageNet state dict per architecture some trial starts pretrained:
    # read once by the driver, it reaches every node through the object store.
    imagenet_states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def pick_device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned this trial, so "cuda" is
    # exactly the device Ray chose; with no GPU assigned, CUDA is hidden.
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(params: TrainingParams, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = params.training
    # Fused kernels update every parameter in one pass instead of a loop over ~60 tensors.
    # Measured for ResNet18 on one CPU thread (bench.loop): Adam's step 67 -> 17 ms,
    # SGD's 28 -> 12 ms, about 20% more training images/s; CUDA has them too. The same
    # update rule, so results differ from the unfused ones only by float rounding.
    fused = _fused_supported(model) or None
    # A frozen backbone's parameters stay out: weight decay or momentum would move them.
    trainable = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "SGD":
        return torch.optim.SGD(trainable, lr=t.learning_rate, momentum=t.momentum,
                               weight_decay=t.weight_decay, fused=fused)
    if t.optimizer == "AdamW":
        return torch.optim.AdamW(trainable, lr=t.learning_rate,
                                 weight_decay=t.weight_decay, fused=fused)
    return torch.optim.Adam(trainable, lr=t.learning_rate, weight_decay=t.weight_decay,
                            fused=fused)


def _fused_supported(model: torch.nn.Module) -> bool:
    """Fused optimizers need floating-point parameters on a device that has the kernels."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
               for p in model.parameters())


class DeviceSplit:
    """One split as uint8 on the device, normalized per batch (4x less memory than float)."""

    def __init__(self, split: Split, device: torch.device):
        self.images = _on_device(split.images, device)
        self.labels = _on_device(split.labels, device)
        n_sources = len(np.unique(split.sources)) if len(split.sources) else 0
        self.patches_per_image = len(split.sources) // n_sources if n_sources else 1

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _on_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        # Arrays from the object store are read-only shared memory that every trial on
        # the node maps; the trial gets its own writable copy.
        return torch.from_numpy(np.array(array, copy=True))
    # To a GPU the transfer is the copy: a host copy first would only cost time and, with
    # k trials sharing a GPU, k extra copies of the theme in host memory.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (sample) std of uint8 training images in [0, 1], shaped
    (1, C, 1, 1) for broadcasting.

    From a 256-bin histogram per channel rather than a float copy of the split: the copy
    is 4x the split's memory (a large theme would not fit next to it on a GPU) and cost
    0.9 s of a trial's start at 14,000 32 px RGB images on one CPU thread, the histogram
    0.07 s (bench.data). Sums in float64, so the values match the float32 mean/std.
    """
    channels = images.shape[1]
    count = images.numel() // max(channels, 1)
    levels = torch.arange(256, dtype=torch.float64, device=images.device) / 255
    means, stds = [], []
    for c in range(channels):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        mean = (hist * levels).sum() / max(count, 1)
        var = (hist * (levels - mean) ** 2).sum() / max(count - 1, 1)
        means.append(mean)
        stds.append(var.sqrt())
    mean = torch.stack(means).to(torch.float32).reshape(1, channels, 1, 1)
    std = torch.stack(stds).to(torch.float32).reshape(1, channels, 1, 1).clamp_min(1e-3)
    return mean, std


def evaluate(model: torch.nn.Module, split: DeviceSplit, mean, std) -> tuple[float, float]:
    loss, acc, _ = _evaluate(model, split, mean, std, per_image=False)
    return loss, acc


def evaluate_test(model: torch.nn.Module, split: DeviceSplit, mean, std) -> dict[str, float]:
    """The final test metrics, with the accuracy per source image that the shipped
    model gives (patch probabilities averaged per image)."""
    patches = split.patches_per_image > 1
    loss, acc, image_acc = _evaluate(model, split, mean, std, per_image=patches)
    return {"test_loss": loss, "test_acc": acc,
            "test_image_acc": image_acc if patches else acc}


def _evaluate(model, split: DeviceSplit, mean, std, *, per_image: bool):
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    probabilities = []
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH):
            x = network_input(split.images[start:start + EVAL_BATCH], mean, std)
            y = split.labels[start:start + EVAL_BATCH]
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            if per_image:
                probabilities.append(torch.softmax(logits, dim=1))
    n = max(len(split), 1)
    image_acc = None
    if per_image:
        image_acc = _image_accuracy(torch.cat(probabilities), split)
    return loss_sum.item() / n, correct.item() / n, image_acc


def _image_accuracy(probabilities: torch.Tensor, split: DeviceSplit) -> float:
    # Patches of one image are consecutive (data._build_splits), as the model cuts them.
    k = split.patches_per_image
    per_image = probabilities.reshape(-1, k, probabilities.shape[1]).mean(dim=1)
    labels = split.labels.reshape(-1, k)[:, 0]
    return (per_image.argmax(dim=1) == labels).float().mean().item() if len(labels) else 0.0


def train_epoch(model, optimizer, split: DeviceSplit, mean, std, *, batch_size: int,
                augments: AugmentSettings | None, generator: torch.Generator) -> tuple[float, float]:
    set_train_mode(model)
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
        x = to_unit(split.images[idx])
        if augments is not None:
            # Photometric augments work on [0, 1] values, so they come before normalizing.
            x = augment_batch(x, augments)
        x = standardize(x, mean, std)
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


def save_checkpoint(folder: Path, model, optimizer, epoch: int, *, mean: torch.Tensor,
                    std: torch.Tensor) -> None:
    # The normalization statistics travel with the weights: the packaged model needs
    # exactly the values this trial trained with.
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "mean": mean.flatten().cpu().tolist(),
                "std": std.flatten().cpu().tolist()}, folder / CHECKPOINT_FILE)


def load_state_dict(folder: Path) -> dict[str, Any]:
    return torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def train_trial(config: dict[str, Any], *, data: PreparedData, settings: TrialSettings) -> None:
    params = TrainingParams.model_validate(params_with_sample(settings.base, config))
    cap = int(settings.memory_gb * GIB) if settings.memory_gb else None
    try:
        with memory_cap(cap):
            _train(params, data, settings)
    except Exception as exc:
        # The cap is lifted here: building the report has memory again.
        if isinstance(exc, TrialOutOfMemoryError) or not is_out_of_memory(
                exc, capped=cap is not None):
            raise
        raise TrialOutOfMemoryError(_oom_message(exc, settings)) from exc


def _oom_message(exc: BaseException, settings: TrialSettings) -> str:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
    fixes = ["lower training.batch_size or data.image_size", "pick a smaller model.name"]
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        fixes.append("give each trial a larger GPU share (resources.gpu)")
    elif settings.memory_gb:
        fixes.append(f"raise resources.memory_gb (now {settings.memory_gb:g})")
    return f"out of memory ({detail}). Fix: {', or '.join(fixes)}."


def _imagenet_state(params: TrainingParams, settings: TrialSettings
                    ) -> dict[str, torch.Tensor] | None:
    if not params.model.pretrained:
        return None
    state = settings.imagenet_states.get(params.model.name)
    if state is None:
        # prepare_study loads every architecture the space can pair with pretrained.
        raise RuntimeError(f"no ImageNet weights were sent for {params.model.name}")
    return state


def _train(params: TrainingParams, data: PreparedData, settings: TrialSettings) -> None:
    torch.set_num_threads(max(1, int(settings.cpus)))
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(params.data.seed)
    model = build_model(params.model.name, num_classes=settings.num_classes,
                        in_channels=settings.in_channels, weights=params.model.weights,
                        imagenet_state=_imagenet_state(params, settings)).to(device)
    if params.model.freeze_backbone:
        freeze_backbone(model)
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
                                   "valid_acc": valid_acc, "node_id": node_id,
                                   "resumed_from_epoch": start_epoch}
        if epoch + 1 == epochs:
            metrics.update(evaluate_test(model, test, mean, std))
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder), model, optimizer, epoch + 1, mean=mean, std=std)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except RuntimeError:
        return os.uname().nodename
