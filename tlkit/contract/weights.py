"""Safe weight loading: safetensors, or ``torch.load(..., weights_only=True)``. Never unpickles code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tlkit.errors import BadInputError

if TYPE_CHECKING:
    import torch


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, ``.pt``/``.pth``/``.bin`` (weights only). Unwraps ``{"state_dict": ...}``
    and ``{"model": ...}`` containers."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(
            f"{path}: cannot read weights ({type(exc).__name__}: {exc}); use a .safetensors or a weights-only "
            f"torch file"
        ) from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BadInputError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state
