"""The function each Ray Tune trial runs: train one ResNet and report every epoch.

The data arrive once per study through Ray's object store (tune.with_parameters): the
split's uint8 arrays (resident) or the list of shard items (streaming); batches come
from tuning.trial.batches and are normalized and augmented on the device. Nothing here
reads the database or decodes an image, so a worker node needs neither.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ray import tune

from theme_classifier.network import torchvision_models
from theme_classifier.preprocess import network_input, standardize, to_unit
from tuning.config.params import TrainingParams, params_with_sample
from tuning.data import TrialData
from tuning.data.augment import AugmentSettings, augment_batch
from tuning.data.shards import ShardedData
from tuning.evaluation import scores
from tuning.trial.batches import DeviceSplit, StreamSplit, stats_from_sums
from tuning.trial.memory_cap import GIB, TrialOutOfMemoryError, is_out_of_memory, memory_cap
from tuning.trial.model import build_model, freeze_backbone, set_train_mode

CHECKPOINT_FILE = "checkpoint.pt"
# Evaluation batches hold a fixed number of pixels, not of images: 512 images at 64 px,
# 41 at 224 px. Activations grow with pixels, and 512 images at 224 px took a CPU
# trial's peak memory past 3 GiB (the first convolution's output alone is 1.6 GB).
EVAL_BATCH = 512
EVAL_PIXELS = EVAL_BATCH * 64 * 64


def eval_batch_size(side: int) -> int:
    return max(1, min(EVAL_BATCH, EVAL_PIXELS // (side * side)))


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


def evaluate(model: torch.nn.Module, split, mean, std) -> tuple[float, float]:
    loss, acc, _, _ = _evaluate(model, split, mean, std, per_image=False)
    return loss, acc


def evaluate_valid(model: torch.nn.Module, split, mean, std) -> dict[str, float]:
    """The per-epoch validation metrics, all from one pass over the split."""
    loss, acc, _, confusion = _evaluate(model, split, mean, std, per_image=False)
    return {"valid_loss": loss, "valid_acc": acc, **_class_balanced("valid", confusion)}


def evaluate_test(model: torch.nn.Module, split, mean, std) -> dict[str, float]:
    """The final test metrics, with the accuracy per source image that the shipped
    model gives (patch probabilities averaged per image)."""
    patches = split.patches_per_image > 1
    loss, acc, image_acc, confusion = _evaluate(model, split, mean, std, per_image=patches)
    return {"test_loss": loss, "test_acc": acc,
            "test_image_acc": image_acc if patches else acc,
            **_class_balanced("test", confusion)}


def _class_balanced(split_name: str, confusion: torch.Tensor) -> dict[str, float]:
    counts = confusion.cpu().numpy()
    return {f"{split_name}_balanced_acc": scores.balanced_accuracy(counts),
            f"{split_name}_macro_f1": scores.macro_f1(counts)}


def _evaluate(model, split, mean, std, *, per_image: bool):
    """Loss, accuracy, per-image accuracy (None unless asked) and the confusion matrix
    (rows true, columns predicted) of one pass over the split."""
    model.eval()
    device = split.labels.device
    loss_sum = torch.zeros((), device=device)
    confusion = None
    probabilities = []
    with torch.inference_mode():
        for images, y in split.batches(None, eval_batch_size(split.side)):
            logits = model(network_input(images, mean, std))
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            k = logits.shape[1]
            # Counted on the device, read once at the end: no host sync per batch.
            pairs = torch.bincount(y * k + logits.argmax(dim=1), minlength=k * k)
            confusion = pairs if confusion is None else confusion + pairs
            if per_image:
                probabilities.append(torch.softmax(logits, dim=1))
    if confusion is None:
        confusion = torch.zeros(0, dtype=torch.long, device=device)
    k = int(round(confusion.numel() ** 0.5))
    confusion = confusion.reshape(k, k)
    n = max(len(split), 1)
    image_acc = None
    if per_image:
        image_acc = _image_accuracy(torch.cat(probabilities), split)
    return loss_sum.item() / n, confusion.trace().item() / n, image_acc, confusion


def _image_accuracy(probabilities: torch.Tensor, split) -> float:
    # Patches of one image are consecutive (tuning.data.resident), as the model cuts them.
    k = split.patches_per_image
    per_image = probabilities.reshape(-1, k, probabilities.shape[1]).mean(dim=1)
    labels = split.labels.reshape(-1, k)[:, 0]
    return (per_image.argmax(dim=1) == labels).float().mean().item() if len(labels) else 0.0


def train_epoch(model, optimizer, split, mean, std, *, batch_size: int,
                augments: AugmentSettings | None, generator: torch.Generator,
                max_steps: int | None = None) -> tuple[float, float]:
    """One pass over a random order of the split (a DeviceSplit or StreamSplit), or
    over its first `max_steps` batches (training.steps_per_epoch)."""
    set_train_mode(model)
    device = split.labels.device
    order = torch.randperm(len(split), generator=generator)
    if max_steps is not None:
        order = order[:max_steps * batch_size]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, y in split.batches(order, batch_size):
        if y.numel() < 2:
            # BatchNorm cannot train on a single image; one leftover image is skipped.
            continue
        x = to_unit(images)
        if augments is not None:
            # Photometric augments work on [0, 1] values, so they come before normalizing.
            x = augment_batch(x, augments)
        x = standardize(x, mean, std)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: a .item() per step would sync host and GPU.
        loss_sum += loss.detach() * y.numel()
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += y.numel()
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


def train_trial(config: dict[str, Any], *, data: TrialData,
                settings: TrialSettings) -> None:
    params = TrainingParams.model_validate(params_with_sample(settings.base, config))
    cap = int(settings.memory_gb * GIB) if settings.memory_gb else None
    # Loaded before the cap: torchvision's import (about 100 MB with torch._dynamo) is
    # the worker's, not the trial's, and theme_classifier.network loads it on first use.
    torchvision_models()
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


def _train(params: TrainingParams, data: TrialData,
           settings: TrialSettings) -> None:
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

    train, valid, test = open_splits(data, device)
    mean, std = stats_from_sums(data.train_sums, device)
    generator = torch.Generator().manual_seed(params.data.seed + start_epoch)
    node_id = _node_id()
    epochs = params.training.num_epochs
    for epoch in range(start_epoch, epochs):
        train_loss, train_acc = train_epoch(
            model, optimizer, train, mean, std, batch_size=params.training.batch_size,
            augments=settings.augments, generator=generator,
            max_steps=params.training.steps_per_epoch)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                   "train_acc": train_acc,
                                   **evaluate_valid(model, valid, mean, std),
                                   "node_id": node_id, "resumed_from_epoch": start_epoch}
        if epoch + 1 == epochs:
            metrics.update(evaluate_test(model, test, mean, std))
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder), model, optimizer, epoch + 1, mean=mean, std=std)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def open_splits(data: TrialData, device: torch.device) -> tuple:
    """train, valid and test as the data path gives them (tuning.trial.batches)."""
    splits = (data.train, data.valid, data.test)
    if isinstance(data, ShardedData):
        return tuple(StreamSplit(s, data, device) for s in splits)
    return tuple(DeviceSplit(s, device) for s in splits)


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except RuntimeError:
        return os.uname().nodename
