"""The head contract and the built-in torch heads.

A head maps an embedding ``[N, in_dim]`` to class logits ``[N, n_classes]`` (``kind="torch"``), or is a
scikit-learn classifier fitted on cached features (``kind="estimator"``). Plugins add heads through the
``tlkit_register_heads`` hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.registry import get_head_entry

if TYPE_CHECKING:
    from torch import nn

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


def linear_head(in_dim: int, n_classes: int) -> nn.Module:
    """A single linear layer."""
    from torch import nn

    return nn.Linear(in_dim, n_classes)


def mlp_head(
    in_dim: int,
    n_classes: int,
    hidden: int | Sequence[int] = 256,
    activation: str = "relu",
    dropout: float = 0.5,
) -> nn.Module:
    """Hidden layers with an activation and dropout; the default is the classic Dense 256, ReLU, Dropout 0.5."""
    from torch import nn

    if activation not in ACTIVATIONS:
        raise ConfigError(f"mlp activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
    sizes = [int(hidden)] if isinstance(hidden, int | str) else [int(h) for h in hidden]
    act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    prev = in_dim
    for size in sizes:
        layers += [nn.Linear(prev, size), act(), nn.Dropout(float(dropout))]
        prev = size
    layers.append(nn.Linear(prev, n_classes))
    return nn.Sequential(*layers)


def build_head(name: str, in_dim: int, n_classes: int, **params: Any) -> Any:
    """Build a registered head: an ``nn.Module`` for torch heads, an unfitted estimator for estimator heads."""
    entry = get_head_entry(name)
    try:
        if entry.kind == "torch":
            return entry.factory(in_dim, n_classes, **params)
        return entry.factory(**params)
    except TypeError as exc:
        raise ConfigError(f"head {name!r}: bad parameters {params} ({exc})") from exc
