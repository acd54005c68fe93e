"""torchvision's ImageNet weights, found in the local torch hub cache and never downloaded.

`model.pretrained: true` reads the file torchvision itself would download, from the folder
it would put it in: `torch.hub.get_dir()/checkpoints` (`$TORCH_HOME/hub/checkpoints`,
`~/.cache/torch/hub/checkpoints` by default). Clusters here have no internet, so a missing
file is a user error at start (and at --dry-run), naming the file, the folder and the URL.
The driver reads each needed file once; the state dicts reach the trials through Ray's
object store (inside TrialSettings), so worker nodes need neither the file nor internet.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tuning.config.params import has_dotted
from tuning.errors import ConfigError
from tuning.trial.model import LOAD_ERRORS, load_problem

# Pinned, not `.DEFAULT`: each is torchvision's DEFAULT today (0.29), and pinning keeps
# the file a cluster was given valid when a torchvision upgrade moves DEFAULT on.
_IMAGENET_WEIGHTS = {"ResNet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
                     "ResNet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
                     "ResNet101": ("ResNet101_Weights", "IMAGENET1K_V2")}
# The keys whose combinations decide which trials start pretrained or frozen.
_MODEL_KEYS = ("model.name", "model.pretrained", "model.freeze_backbone", "model.weights")

StateDict = dict[str, torch.Tensor]


def imagenet_weights(name: str):
    """torchvision's weights enum member for an architecture name. torchvision is loaded
    here, on first use: its import costs a driver about 3 s of CPU (torchvision.ops
    loads torch._dynamo), and most studies start no pretrained model."""
    from torchvision import models

    enum_name, member = _IMAGENET_WEIGHTS[name]
    return getattr(getattr(models, enum_name), member)


def cache_folder() -> Path:
    """Where torchvision keeps (and would download) its weights; follows TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def file_name(name: str) -> str:
    return Path(imagenet_weights(name).url).name


def weights_file(name: str) -> Path:
    return cache_folder() / file_name(name)


def fetch_command(name: str) -> str:
    weights = imagenet_weights(name)
    return (f'python -c "import torchvision; torchvision.models.{type(weights).__name__}.'
            f'{weights.name}.get_state_dict()"')


def load_imagenet_state(name: str) -> StateDict:
    """The ImageNet state dict of one architecture, read through torchvision's API.

    The file is checked first: torchvision would otherwise try to download it.
    """
    weights = imagenet_weights(name)
    path = weights_file(name)
    if not path.is_file():
        raise missing_weights_error([name])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch's pickle-protocol notes: not ours to show
            state = weights.get_state_dict(progress=False, model_dir=str(path.parent),
                                           map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        raise ConfigError(f"pretrained weights file {path} cannot be read as a state_dict "
                          f"({load_problem(exc)}).",
                          key="model.pretrained",
                          fix=f"fetch it again from {weights.url} and replace it.") from None
    _check_matches_architecture(name, state, path)
    return state


def _check_matches_architecture(name: str, state: Any, path: Path) -> None:
    """A file under torchvision's name must hold that architecture's 1000-class weights."""
    # Built on the meta device: shapes only, no memory and no time spent on init.
    from torchvision import models

    with torch.device("meta"):
        expected = {k: v.shape for k, v in getattr(models, name.lower())().state_dict().items()}
    if not isinstance(state, dict):
        problem = f"it holds a {type(state).__name__}, not a state_dict"
    else:
        wrong = sorted(k for k in expected
                       if k not in state or getattr(state[k], "shape", None) != expected[k])
        extra = sorted(k for k in state if k not in expected)
        problem = (f"layers missing or of another shape: {', '.join(wrong[:3])}" if wrong else
                   f"unexpected layers: {', '.join(extra[:3])}" if extra else "")
    if problem:
        raise ConfigError(f"pretrained weights file {path} does not hold torchvision's "
                          f"{name} ImageNet weights ({problem}).", key="model.pretrained",
                          fix=f"fetch it again from {imagenet_weights(name).url}.")


def missing_weights_error(names: list[str], *, file: str | None = None,
                          key: str = "model.pretrained") -> ConfigError:
    folder = cache_folder()
    files = ", ".join(f"{file_name(n)} ({n})" for n in names)
    urls = " and ".join(imagenet_weights(n).url for n in names)
    return ConfigError(
        f"pretrained ImageNet weights not found in the torch hub cache {folder}: {files}; "
        f"nothing is downloaded here.", file=file, key=key,
        fix=f"on a machine with internet fetch {urls} (or run {fetch_command(names[0])} "
            f"there and take the file from ~/.cache/torch/hub/checkpoints/), copy it into "
            f"{folder}/ (or point TORCH_HOME at a folder whose hub/checkpoints/ holds it), "
            f"or set model.pretrained: false.")


@dataclass(frozen=True)
class ModelChoice:
    """One combination of the model keys a trial can run with."""
    name: str
    pretrained: bool
    freeze_backbone: bool
    weights: str | None

    @property
    def frozen_random(self) -> bool:
        # A linear probe on random features: legal, but rarely what anyone meant.
        return self.freeze_backbone and not self.pretrained and not self.weights


def model_choices(config) -> list[ModelChoice]:
    """Every combination of model keys the search space can give a trial.

    Each tuned key contributes its edge values (a categorical's choices); the values go
    through the same validation as a trial's, so `true` and `1` count alike.
    """
    options = [[(key, v) for v in config.space[key].edge_values()]
               for key in _MODEL_KEYS if key in config.space]
    choices = []
    for sample in itertools.product(*options):
        m = config.trial_params(dict(sample)).model
        choices.append(ModelChoice(m.name, m.pretrained, m.freeze_backbone, m.weights))
    return choices


def _where(config, key: str) -> tuple[str, str]:
    """The file and key a model setting came from: a tuned key, params.yaml or base_params."""
    if key in config.space:
        return str(config.files.optuna_params), f"params_to_tune.{key}"
    if has_dotted(config.raw.get("params", {}), key):
        return str(config.files.params), key
    return str(config.files.optuna_params), f"base_params.{key}"


def check_model_choices(config, *, warn: Callable[[str], None]) -> list[str]:
    """Refuse a study whose every trial would freeze a random backbone; warn when only
    some tuned combinations do. Returns the architectures some trial starts pretrained."""
    choices = model_choices(config)
    frozen_random = [c for c in choices if c.frozen_random]
    if frozen_random and len(frozen_random) == len(choices):
        file, key = _where(config, "model.freeze_backbone")
        raise ConfigError("model.freeze_backbone is true but there are no weights to keep "
                          "frozen (model.pretrained is false and model.weights is unset): "
                          "only the classifier would train, on random features.",
                          file=file, key=key,
                          fix="set model.pretrained: true or model.weights, or "
                              "set model.freeze_backbone: false.")
    if frozen_random:
        warn("some tuned combinations freeze a backbone that has no pretrained weights "
             "(model.freeze_backbone true with model.pretrained false): those trials train "
             "only the classifier, on random features.")
    return sorted({c.name for c in choices if c.pretrained}, key=list(_IMAGENET_WEIGHTS).index)


def check_weights_files(config) -> None:
    """Each model.weights file a trial would load, loaded now into its architecture: a
    missing or unfit file is a start-up error, not a FAILED trial after Ray started."""
    from tuning.trial.model import build_model

    file, key = _where(config, "model.weights")
    for name, weights in sorted({(c.name, c.weights) for c in model_choices(config)
                                 if c.weights}):
        try:
            build_model(name, num_classes=2, in_channels=config.params.data.channels,
                        weights=weights)
        except ConfigError as exc:
            raise ConfigError(exc.message, file=file, key=key, fix=exc.fix) from None


def load_study_weights(config, *, progress: Callable[[str], None]) -> dict[str, StateDict]:
    """The ImageNet state dict of each architecture some trial starts pretrained, read once
    on the driver; checks every file before reading any, so one error names them all."""
    names = check_model_choices(config, warn=lambda m: progress(f"warning: {m}"))
    check_weights_files(config)
    missing = [n for n in names if not weights_file(n).is_file()]
    if missing:
        file, key = _where(config, "model.pretrained")
        raise missing_weights_error(missing, file=file, key=key)
    states = {}
    for name in names:
        progress(f"pretrained ImageNet weights for {name}: {weights_file(name)}")
        states[name] = load_imagenet_state(name)
    return states
