"""Device and mixed-precision choices for training: autocast contexts and the fp16 gradient scaler."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda:1``, ``cpu``, ``mps`` are taken as given."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a GPU that supports it (else fp16) and fp32 on the CPU, where training stays exact."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> Any:
    """A gradient scaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
