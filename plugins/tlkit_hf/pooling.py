"""Pooling a sequence of hidden states ``[N, T, D]`` over its valid positions (mask ``[N, T]``) into ``[N, D]``.

Padding never reaches the result: every mode looks only at positions where the mask is set, so an item pools the
same alone and in a batch with longer items. The formulas match sentence-transformers' ``Pooling`` module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Pooling over token or frame positions (``pooler`` and ``cls`` are model-specific and handled by the backbone).
SEQUENCE_POOLING = ("mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` ``[N, T, D]`` over positions where ``mask`` ``[N, T]`` is non-zero."""
    import torch

    m = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":
        return hidden[:, 0]
    if mode in ("mean", "mean_sqrt_len"):
        total = (hidden * m).sum(1)
        count = m.sum(1).clamp(min=1e-9)
        return total / (count if mode == "mean" else count.sqrt())
    if mode == "max":
        filled = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min)
        return filled.max(1).values
    if mode == "weightedmean":
        weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
        w = m * weights.view(1, -1, 1)
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
    if mode == "lasttoken":
        positions = torch.arange(hidden.shape[1], device=hidden.device).view(1, -1)
        last = (positions * (mask != 0)).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}")


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nn.functional.normalize(x, p=2, dim=1)


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """A ``[N, width]`` boolean mask with the first ``lengths[i]`` positions of row ``i`` set."""
    import torch

    return torch.arange(width, device=lengths.device).view(1, -1) < lengths.view(-1, 1)
