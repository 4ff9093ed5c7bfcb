"""Safe weight loading: safetensors, or ``torch.load(..., weights_only=True)``. Never unpickles code.

Every backbone that reads a local weights file reads it here, so every plugin accepts the same files and refuses
the same unsafe ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError

if TYPE_CHECKING:
    import torch

#: Suffixes of the weight files :func:`load_state_dict_file` reads.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

#: Checkpoint containers unwrapped to reach the state dict, in order (the EMA ones only with ``prefer_ema``).
_CONTAINERS = ("state_dict", "model", "module")
_EMA_CONTAINERS = ("state_dict_ema", "model_ema")


def load_state_dict_file(path: str | os.PathLike[str], *, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or ``.pt``/``.pth``/``.bin`` loaded weights-only.

    Training checkpoints are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}`` and ``{"module": ...}``, and with
    ``prefer_ema`` first ``{"state_dict_ema": ...}`` and ``{"model_ema": ...}`` (timm's training script saves both; its
    EMA weights are the ones to use). A ``module.`` prefix on every key (a DataParallel/DDP save) is removed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(
            f"{path}: cannot read weights ({type(exc).__name__}: {exc}); use a .safetensors or a weights-only "
            f"torch file"
        ) from exc
    containers = (*_EMA_CONTAINERS, *_CONTAINERS) if prefer_ema else _CONTAINERS
    for key in containers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BadInputError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    tensors: dict[str, torch.Tensor] = state
    return tensors
