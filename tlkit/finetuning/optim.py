"""Parameter groups with discriminative learning rates, created once, up front.

Each backbone block gets its own groups (weights with weight decay, and norms/biases without), and so does the
head. Every group exists from the first step, whether its block is frozen or not: a frozen block's groups sit at
learning rate 0 with ``requires_grad`` off. Unfreezing later only changes rates and flags, never the optimizer's
structure, so optimizer state saves and resumes at any epoch of any phase (the failure of Lightning issue 6891),
and a DDP wrapper sees the same parameters throughout.

Rates: the head gets ``lr`` (default 1e-3); the backbone gets ``lr × backbone_lr_ratio`` (default 0.1, so 1e-4; 0.03
for text) or an explicit ``backbone_lr``. With ``layer_decay`` d, the top block keeps the backbone rate and each block
below it is multiplied by d once more: block k from the top (k = 0 for the last) gets ``backbone_lr × d**k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tlkit.contract.backbone import Block

DEFAULT_HEAD_LR = 1e-3
DEFAULT_BACKBONE_LR_RATIO = 0.1
#: The default ratio where a modality's measured recipe differs: text transformers at 3e-5 (docs/finetuning.md).
BACKBONE_LR_RATIO_BY_MODALITY = {"text": 0.03}
OPTIMIZERS = ("adamw", "sgd")
HEAD = "head"


def backbone_rate(
    head_lr: float,
    backbone_lr_ratio: float | None,
    backbone_lr: float | None,
    modality: str | None = None,
    adapters: bool = False,
) -> float:
    """The backbone's base rate from the head rate and either a ratio or an absolute rate (not both); without
    either, the default ratio for the backbone's ``modality``, or with ``adapters`` (the rate of adapter parameters
    rather than pretrained weights) :data:`tlkit.finetuning.adapters.DEFAULT_ADAPTER_LR_RATIO`."""
    if backbone_lr_ratio is not None and backbone_lr is not None:
        raise ConfigError(
            "give {backbone_lr_ratio} or {backbone_lr}, not both", params=("backbone_lr_ratio", "backbone_lr")
        )
    if head_lr <= 0:
        raise ConfigError(f"{{param}} must be positive, not {head_lr}", param="lr")
    if backbone_lr is not None:
        if backbone_lr < 0:
            raise ConfigError(f"{{param}} must be ≥ 0, not {backbone_lr}", param="backbone_lr")
        return float(backbone_lr)
    default = BACKBONE_LR_RATIO_BY_MODALITY.get(modality or "", DEFAULT_BACKBONE_LR_RATIO)
    if adapters:
        from tlkit.finetuning.adapters import DEFAULT_ADAPTER_LR_RATIO

        default = DEFAULT_ADAPTER_LR_RATIO
    ratio = default if backbone_lr_ratio is None else backbone_lr_ratio
    if ratio < 0:
        raise ConfigError(f"{{param}} must be ≥ 0, not {ratio}", param="backbone_lr_ratio")
    return float(head_lr * ratio)


def block_rates(block_names: Sequence[str], backbone_lr: float, layer_decay: float | None = None) -> dict[str, float]:
    """The base rate of each block; with ``layer_decay`` earlier blocks get geometrically lower rates."""
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"{{param}} must be in (0, 1], not {layer_decay}", param="layer_decay")
    decay = 1.0 if layer_decay is None else float(layer_decay)
    n = len(block_names)
    return {name: backbone_lr * decay ** (n - 1 - i) for i, name in enumerate(block_names)}


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases and other 1-d parameters get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias")


def build_param_groups(
    backbone: nn.Module,
    blocks: Sequence[Block],
    head: nn.Module,
    rates: Mapping[str, float],
    head_lr: float,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """One decay and one no-decay group per block and for the head (empty ones dropped), all at lr 0.

    Each group carries ``name``, ``block`` and ``base_lr``; :func:`set_group_rates` turns them into rates.
    """
    named = dict(backbone.named_parameters())
    sources: list[tuple[str, float, Iterable[tuple[str, Any]]]] = [
        (b.name, float(rates[b.name]), [(p, named[p]) for p in b.params]) for b in blocks
    ]
    sources.append((HEAD, float(head_lr), list(head.named_parameters())))
    groups: list[dict[str, Any]] = []
    for block, base, params in sources:
        params = list(params)
        decay = [p for n, p in params if not no_weight_decay(n, p)]
        plain = [p for n, p in params if no_weight_decay(n, p)]
        for suffix, members, wd in (("", decay, weight_decay), ("/no_decay", plain, 0.0)):
            if members:
                groups.append(
                    {
                        "params": members,
                        "lr": 0.0,
                        "weight_decay": float(wd),
                        "name": block + suffix,
                        "block": block,
                        "base_lr": base,
                    }
                )
    return groups


def set_group_rates(optimizer: torch.optim.Optimizer, trainable: Iterable[str], factor: float = 1.0) -> None:
    """Set each group's rate: ``base_lr × factor`` for the head and trainable blocks, 0 for frozen ones."""
    on = set(trainable) | {HEAD}
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor if group["block"] in on else 0.0


def make_optimizer(
    name: str, groups: list[dict[str, Any]], *, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or SGD with Nesterov momentum over the prepared groups."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=momentum, nesterov=True)
    raise ConfigError(f"{{param}} must be one of {', '.join(OPTIMIZERS)}, not {name!r}", param="optimizer")
