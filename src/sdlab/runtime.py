"""Where and how tensors run: the one owner of device, default precision, memory format and
autocast.

A command picks its device once, at the entry point (`pick_device`). Precision has one
vocabulary, PRECISIONS, for training and sampling alike: "auto" is `default_precision`, resolved
here (`resolve_precision`) so that the command line and the Python API run the same on the same
machine; the trainer, the samplers and the evaluation commands receive both. Why each choice is
fast on which hardware is measured in BENCHMARKS.md.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import torch
from torch import nn

from .config import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps"
_DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> None:
    """Raise ConfigError("device") unless `name` is spelled as DEVICE_HELP says (no hardware check)."""
    if not _DEVICE_NAME.match(name):
        raise ConfigError("device", f"got {name!r}; choose {DEVICE_HELP}")


def pick_device(name: str) -> torch.device:
    """The torch.device for `name` (see DEVICE_HELP); ConfigError("device") when it is not here."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", "no CUDA device is visible; use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError("device", f"{name}: only {torch.cuda.device_count()} CUDA device(s) "
                                        f"here (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device", "mps: this torch build or machine has no Apple GPU; use --device cpu")
    return torch.device(name)


def default_precision(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (CUDA with bf16, or CPUs with AVX512-BF16/AMX),
    else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"   # native only
    if device.type == "cpu":
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "bf16" if native else "fp32"
    return "fp32"


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision `precision` means on `device` ("auto": `default_precision`); ConfigError
    ("precision") for one it cannot autocast to."""
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"got {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision", f"needs CUDA (device is {device.type}); use bf16 or fp32")
    return default_precision(device) if precision == "auto" else precision


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` on `device` (bf16 works on CPU too; "auto" resolved)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def memory_format(device: torch.device, image_size: int) -> torch.memory_format:
    """Channels-last (NHWC) on CPU for inputs of 16x16 and up, contiguous (NCHW) otherwise.

    oneDNN's convolutions on 32x32 maps run faster NHWC on the CPUs measured, and
    `kernels.groupnorm` replaces the slow NHWC bf16 GroupNorm; on 8x8 latents per-op overhead
    dominates and NCHW was faster. GPUs keep PyTorch's default. (BENCHMARKS.md, "CPU kernels".)
    """
    return torch.channels_last if device.type == "cpu" and image_size >= 16 else torch.contiguous_format


def fused_optimizer(model: nn.Module) -> bool:
    """Whether Adam/AdamW can use torch's fused kernel (one pass over all parameters) for `model`:
    floating-point parameters on CPU or CUDA."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
