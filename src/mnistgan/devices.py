"""Where and how training computes: the device, the precision, and the process-wide backend flags."""

from __future__ import annotations

import torch

from .config import Config
from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as an indexed torch device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu" and device.index:
        raise UserError(f"device {name}: the CPU takes no index; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name} is not supported; use auto, cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} asked for but no CUDA GPU is visible; use cpu or auto")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", index)
    return device


def uses_channels_last(config: Config) -> bool:
    """Whether the networks and the real batches are kept channels-last: conv nets, when the setting is on."""
    return config.performance.channels_last and config.model.architecture == "dcgan"


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them oneDNN
    emulates bf16, far slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(config: Config, device: torch.device) -> str:
    """'auto': bf16 autocast (fp32 master weights) where it is measured faster, else fp32.

    CUDA: bf16 for the conv nets; the MLPs' matrix products at batch 64 are too small for bf16 to
    pay for its casts. CPU: bf16 when the CPU computes bf16 natively, else fp32 (docs/speed.md).
    """
    precision = config.performance.precision
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if config.model.architecture == "dcgan" else "fp32"
    return "bf16" if cpu_computes_bf16() else "fp32"


def configure_backends(device: torch.device, precision: str) -> None:
    """Process-wide CUDA settings for training: autotuned convolutions, TF32 when precision is fp32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # conv algorithms chosen during the eager warm-up
        torch.backends.cuda.matmul.allow_tf32 = precision == "fp32"  # fp32 keeps 10-bit-mantissa matmuls: TF32
        torch.backends.cudnn.allow_tf32 = precision == "fp32"
