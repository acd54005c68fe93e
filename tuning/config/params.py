"""The training parameters one trial runs with: base_params < params.yaml < sampled values.

Every section forbids unknown keys, so a misspelled key fails before any work starts.
The defaults are the original system's where it had one.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MODEL_NAMES = ("ResNet18", "ResNet50", "ResNet101")
OPTIMIZERS = ("Adam", "SGD", "AdamW")

# What the trainable reports. A study metric outside this set can never be read.
# valid_balanced_acc (the mean recall over classes) and valid_macro_f1 (the mean F1 over
# classes) weigh every class alike: on an unbalanced theme, accuracy rewards a model that
# ignores its small classes. Computed from the same predictions as valid_acc.
EPOCH_METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc",
                 "valid_balanced_acc", "valid_macro_f1")
# In every last report: is_final_result looks for these.
FINAL_METRICS = ("test_loss", "test_acc")
BALANCED_TEST_METRICS = ("test_balanced_acc", "test_macro_f1")
# Accuracy per source image: on patches, the mean of its patches' probabilities, as the
# shipped model answers; without patches it equals test_acc.
IMAGE_METRICS = ("test_image_acc",)
REPORTED_METRICS = EPOCH_METRICS + FINAL_METRICS + BALANCED_TEST_METRICS + IMAGE_METRICS
# The study selects on validation unless told otherwise: a test figure that chose the
# model is no longer a held-out estimate of it.
DEFAULT_METRIC = "valid_acc"


def selection_split(metric: str) -> str:
    """The split whose figures choose the best trial: "test" for a test_* metric (as the
    original tool's configs had it), else "validation"."""
    return "test" if metric.startswith("test_") else "validation"

# Upper bounds of the counts a user may ask for, shared by the config models and the
# CLI's flags: a value past them is a typo, and an integer past 64 bits would overflow
# SQLite (Optuna's and Django's stores) or hang Ray instead of failing at start.
MAX_TRIALS = 100_000
MAX_CONCURRENT_TRIALS = 1_000
MAX_TIMEOUT_SECONDS = 366 * 24 * 3600      # a year: longer is a unit mistake
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_NUM_WORKERS = 256
MAX_NUM_CLASSES = 100_000
MAX_SEED = 2**32 - 1                        # numpy's RandomState takes no larger seed
MAX_ID = 2**63 - 1                          # SQLite's INTEGER
MAX_CPUS = 4_096
MAX_GPUS = 1_024
MAX_MEMORY_GB = 1_000_000
MAX_COUNT = 1_000_000                       # any other count (checkpoints, failures)


def epoch_metric_for(metric: str) -> str:
    """The per-epoch validation metric that follows a study metric (test_acc -> valid_acc,
    test_loss -> valid_loss, test_macro_f1 -> valid_macro_f1): each epoch reports it to
    Optuna as an intermediate value. Validation, whatever the study metric: test metrics
    exist only after the last epoch, and a training metric says little about how a trial
    does on unseen data."""
    for kind in ("balanced_acc", "macro_f1", "loss"):
        if metric.endswith(f"_{kind}"):
            return f"valid_{kind}"
    return "valid_acc"


def is_final_result(result: dict) -> bool:
    """True for the report after a trial's last epoch, the only one with test metrics.

    A trial a scheduler stopped early never sends it, so its value is not a
    half-trained one: it is recorded as pruned.
    """
    return all(name in result for name in FINAL_METRICS)


class Strict(BaseModel):
    # No inf or nan: every number here is a count, a rate, a size or a time.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # Pydantic reads `true` as 1 for a number: `steps_per_epoch: true` is a mistake.
        if isinstance(value, bool) and info.field_name in cls.model_fields \
                and _wants_number(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"a number is expected, not {str(value).lower()}")
        return value


def _wants_number(annotation: Any) -> bool:
    """True when a field takes numbers and no bool (int, float, Literal[1, 3], unions)."""
    kinds: set[str] = set()

    def walk(a: Any) -> None:
        if a is bool:
            kinds.add("bool")
        elif a in (int, float):
            kinds.add("number")
        elif get_origin(a) is Literal:
            for v in get_args(a):
                kinds.add("bool" if isinstance(v, bool) else
                          "number" if isinstance(v, (int, float)) else "other")
        else:
            for arg in get_args(a):
                walk(arg)

    walk(annotation)
    return "number" in kinds and "bool" not in kinds


class ModelParams(Strict):
    name: Literal["ResNet18", "ResNet50", "ResNet101"] = "ResNet18"
    num_classes: int | None = Field(default=None, ge=2, le=MAX_NUM_CLASSES)
    weights: str | None = None  # a local state_dict file; nothing is downloaded
    # torchvision's ImageNet weights, from the local torch hub cache (tuning.trial.pretrained)
    pretrained: bool = False
    # train only the classifier: the backbone's weights and BatchNorm statistics stay
    freeze_backbone: bool = False


class TrainingSection(Strict):
    run_name: str = Field(default="optuna_tuning", min_length=1, max_length=250)
    learning_rate: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=32, ge=1, le=MAX_BATCH_SIZE)
    optimizer: Literal["Adam", "SGD", "AdamW"] = "Adam"
    num_epochs: int = Field(default=3, ge=1, le=MAX_EPOCHS)
    num_workers: int = Field(default=0, ge=0, le=MAX_NUM_WORKERS)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    # At most this many batches per epoch (None: the whole train split): epochs of a
    # theme too large to pass over between two validations.
    steps_per_epoch: int | None = Field(default=None, ge=1, le=MAX_COUNT)


class SplitRatio(Strict):
    train: float = Field(default=0.7, gt=0, lt=1)
    valid: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitRatio":
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"train + valid + test must sum to 1 (train={self.train}, "
                f"valid={self.valid}, test={self.test}, sum={total:g})")
        return self


class DataSection(Strict):
    theme_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    split_ratio: SplitRatio = SplitRatio()
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    image_size: int = Field(default=32, ge=8, le=1024)
    channels: Literal[1, 3] = 3
    skip_unreadable: bool = False
    # resident: the decoded theme in memory (the object store, or the GPU); streaming:
    # batches read from preprocessed shards; auto picks by size (tuning.data.mode).
    mode: Literal["auto", "resident", "streaming"] = "auto"


class BrightnessCorrection(Strict):
    enabled: bool = False
    method: Literal["histogram_equalization"] = "histogram_equalization"


class PatchSection(Strict):
    enabled: bool = False
    size: int | None = Field(default=None, ge=8, le=1024)  # at most data.image_size
    stride: int | None = Field(default=None, ge=1, le=1024)


class PreprocessingSection(Strict):
    brightness_correction: BrightnessCorrection = BrightnessCorrection()
    patch: PatchSection = PatchSection()


class TrainingParams(Strict):
    model: ModelParams = ModelParams()
    training: TrainingSection = TrainingSection()
    data: DataSection = DataSection()
    preprocessing: PreprocessingSection = PreprocessingSection()

    @model_validator(mode="after")
    def _patch_fits_image(self) -> "TrainingParams":
        patch = self.preprocessing.patch
        if patch.enabled:
            if patch.size is None:
                raise ValueError("preprocessing.patch.size is required when patches are enabled")
            if patch.size > self.data.image_size:
                raise ValueError(
                    f"preprocessing.patch.size must be <= data.image_size "
                    f"(size={patch.size}, image_size={self.data.image_size})")
        return self

    @property
    def input_size(self) -> int:
        patch = self.preprocessing.patch
        return patch.size if patch.enabled and patch.size else self.data.image_size


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `override` wins, nested mappings merge key by key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `tree` with `a.b.c` set to value, creating sections on the way."""
    result = copy.deepcopy(tree)
    node = result
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value
    return result


def has_dotted(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def known_param_paths(model: type[BaseModel] = TrainingParams, prefix: str = "") -> list[str]:
    """Every leaf a search space may tune, e.g. `training.learning_rate`."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(known_param_paths(annotation, f"{prefix}{name}."))
        else:
            paths.append(f"{prefix}{name}")
    return paths


def params_with_sample(base: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """The nested params of one trial: the merged base with each dotted sample set."""
    tree = base
    for dotted, value in sample.items():
        tree = set_dotted(tree, dotted, value)
    return tree


# ------------------------------------------------------------ the tunable keys, described

# One line per key that a search space may tune (known_param_paths), for the web UI's
# settings screen and anyone choosing a key; the accepted values come from the models.
PARAM_DESCRIPTIONS: dict[str, str] = {
    "model.name": "Network architecture (torchvision ResNet).",
    "model.num_classes": "Classes of the theme; set from the theme, not worth a search.",
    "model.weights": "A local state_dict file to start from.",
    "model.pretrained": "Start from torchvision's ImageNet weights (local torch hub cache).",
    "model.freeze_backbone": "Train only the classifier; the backbone stays as loaded.",
    "training.run_name": "Name of the MLflow parent run.",
    "training.learning_rate": "Optimizer step size.",
    "training.batch_size": "Images per training batch.",
    "training.optimizer": "Optimizer.",
    "training.num_epochs": "Passes over the training split.",
    "training.num_workers": "Data loader worker processes (streaming data).",
    "training.momentum": "SGD momentum.",
    "training.weight_decay": "L2 penalty on the weights.",
    "training.steps_per_epoch": "At most this many batches per epoch; empty: the whole split.",
    "data.theme_id": "The theme to train on; set by the study, not worth a search.",
    "data.split_ratio.train": "Share of source images in the training split.",
    "data.split_ratio.valid": "Share of source images in the validation split.",
    "data.split_ratio.test": "Share of source images in the test split.",
    "data.seed": "Seed of the split and of training.",
    "data.image_size": "Side of the square input image, in pixels.",
    "data.channels": "1 (grayscale) or 3 (colour) input channels.",
    "data.skip_unreadable": "Skip images that cannot be decoded instead of failing.",
    "data.mode": "Keep decoded images in memory (resident) or stream shards; auto picks.",
    "preprocessing.brightness_correction.enabled": "Histogram equalization of each image.",
    "preprocessing.brightness_correction.method": "Brightness correction method.",
    "preprocessing.patch.enabled": "Train on square patches cut from each image.",
    "preprocessing.patch.size": "Patch side in pixels, at most the image size.",
    "preprocessing.patch.stride": "Step between patches in pixels; empty: the patch size.",
}
# Accepted in a search space, but they name the data and the run, not a hyperparameter.
NOT_WORTH_TUNING = ("data.theme_id", "model.num_classes", "training.run_name")


class Accepts(BaseModel):
    """What one parameter accepts, as its model field says."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["choices", "bool", "int", "float", "text"]
    choices: tuple[Any, ...] = ()
    low: int | float | None = None  # None: unbounded
    high: int | float | None = None
    low_open: bool = False          # `> low` rather than `>= low`
    high_open: bool = False
    optional: bool = False          # empty (None) is accepted too


class TunableKey(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    description: str
    accepts: Accepts
    default: Any = None


def _field_at(dotted: str):
    model: type[BaseModel] = TrainingParams
    *sections, leaf = dotted.split(".")
    for part in sections:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model.model_fields[leaf]


def _accepts(field) -> Accepts:
    annotation = field.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    optional = type(None) in get_args(annotation)
    kind_of = args[0] if optional and len(args) == 1 else annotation
    if get_origin(kind_of) is Literal:
        return Accepts(kind="choices", choices=get_args(kind_of), optional=optional)
    if kind_of is bool:
        return Accepts(kind="bool", choices=(True, False), optional=optional)
    if kind_of not in (int, float):
        return Accepts(kind="text", optional=optional)
    bounds: dict[str, Any] = {}
    for rule in field.metadata:
        for name, low, is_open in (("ge", True, False), ("gt", True, True),
                                   ("le", False, False), ("lt", False, True)):
            if getattr(rule, name, None) is not None:
                side = "low" if low else "high"
                bounds[side] = getattr(rule, name)
                bounds[f"{side}_open"] = is_open
    return Accepts(kind="int" if kind_of is int else "float", optional=optional, **bounds)


def tunable_keys() -> list[TunableKey]:
    """Every key a search space may tune and is worth tuning, in the models' order,
    with its one-line description, what it accepts and its default."""
    keys = []
    for dotted in known_param_paths():
        if dotted in NOT_WORTH_TUNING:
            continue
        field = _field_at(dotted)
        keys.append(TunableKey(name=dotted, description=PARAM_DESCRIPTIONS[dotted],
                               accepts=_accepts(field), default=field.default))
    return keys
