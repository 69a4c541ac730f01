"""Prediction-only forms of a trained convolutional network.

- BatchNorm folded into the convolution it follows: in eval mode a BatchNorm is an affine map per
  channel, so it can be multiplied into the convolution's weights and bias once, and the network
  then skips a full pass over every feature map. The fold is exact (up to float rounding) and is
  checked on a probe batch; a network where it does not hold is used as it is.
- bf16 where the hardware computes it natively: CUDA devices that support it, and CPUs with
  AVX512-BF16 or AMX (oneDNN then runs convolutions in bf16, about twice the images/s of fp32 on
  such a CPU). Probabilities move by rounding only; `make bench` reports how many predicted
  classes change.

Training never uses these forms: the engine builds one per prediction pass from the current (or
averaged) weights, so it always predicts with the latest weights.
"""
from __future__ import annotations

import contextlib
import copy

import torch


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively: AVX512-BF16 or AMX, as torch's CPU feature tests say.
    oneDNN's own bf16 test is not enough: it says yes for any AVX512 CPU, where bf16 is emulated —
    on an Ice Lake Xeon (AVX512, no AVX512-BF16) a MiniLM train step took 5.4 s in bf16 against
    1.45 s in fp32 (batch 32 x 128 tokens, 2 cores)."""
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(native and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_enabled(device: torch.device, cpu_bf16: bool) -> bool:
    """bf16 autocast for prediction on this device: CUDA where supported, a CPU where native and allowed."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16 and cpu_bf16_native()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _fold_pair(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> bool:
    if bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
        return False
    scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    layout = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    conv.weight = torch.nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=layout),
                                     requires_grad=False)
    conv.bias = torch.nn.Parameter(shift + (bias - bn.running_mean) * scale, requires_grad=False)
    return True


def _after_bn(bn: torch.nn.Module) -> torch.nn.Module:
    """What is left of a BatchNorm once folded: nothing, or (timm's BatchNormAct2d) its dropout and
    activation, applied in that order as it applies them."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, torch.nn.Module)]
    return torch.nn.Sequential(*rest) if rest else torch.nn.Identity()


def fold_batchnorm(net: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """(an eval-mode copy of `net` with every Conv2d→BatchNorm2d pair of sibling modules folded,
    the number folded). Siblings in definition order are taken as applied in that order; the
    caller checks the result (`folded_or_original`)."""
    net = copy.deepcopy(net).eval()
    n = 0

    def visit(mod: torch.nn.Module) -> None:
        nonlocal n
        kids = list(mod.named_children())
        for (_, a), (name, b) in zip(kids, kids[1:]):
            if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d) and _fold_pair(a, b):
                setattr(mod, name, _after_bn(b))
                n += 1
        for _, child in mod.named_children():
            visit(child)

    with torch.no_grad():
        visit(net)
    return net, n


def folded_or_original(net: torch.nn.Module, probe: torch.Tensor, tol: float = 1e-3) -> torch.nn.Module:
    """The BatchNorm-folded copy of `net` (put in eval mode) if it gives the same outputs on
    `probe`, within `tol` of their scale; else `net` itself."""
    net.eval()
    folded, n = fold_batchnorm(net)
    if n == 0:
        return net
    with torch.no_grad():
        ref, out = net(probe).float(), folded(probe).float()
    same = out.shape == ref.shape and float((out - ref).abs().max()) <= tol * max(float(ref.abs().max()), 1.0)
    return folded if same else net
