"""The BatchNorm policy for fine-tuning.

In **frozen** blocks, BatchNorm layers always run in eval mode: their running statistics stay exactly as
pretrained and their affine parameters do not train. In **trainable** blocks the policy decides:

- ``frozen``: eval mode and no gradient for γ/β (the block's other weights still train);
- ``affine``: eval mode (statistics frozen) but γ/β train — the default, robust for small batches;
- ``train``: ordinary training mode, statistics update and γ/β train.

``model.train()`` puts every sub-module back into training mode, which would silently start updating the frozen
statistics (the bug class of Lightning issue 21531). :class:`tlkit.finetuning.model.TransferModel` therefore
re-applies the policy inside its own ``train()``, so every call, including one made by a wrapper such as DDP, keeps
it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tlkit.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from tlkit.contract.backbone import Block

BN_POLICIES = ("frozen", "affine", "train")
DEFAULT_BN_POLICY = "affine"
FROZEN_BLOCK_MODE = "eval (frozen)"


def check_bn_policy(policy: str) -> str:
    if policy not in BN_POLICIES:
        raise ConfigError(f"{{param}} must be one of {', '.join(BN_POLICIES)}, not {policy!r}", param="bn_policy")
    return policy


def batchnorm_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm-style layer (anything deriving from torch's ``_BatchNorm``, SyncBatchNorm included)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [(name, m) for name, m in module.named_modules() if isinstance(m, _BatchNorm)]


def bn_block_map(module: nn.Module, blocks: Sequence[Block]) -> dict[str, str]:
    """Map each BatchNorm layer's module name to the block that owns it.

    Blocks list parameter names, so a layer belongs to the block holding its ``weight``; a layer without affine
    parameters goes to the block owning the nearest parameter under the same parent module.
    """
    owner = {p: b.name for b in blocks for p in b.params}
    result: dict[str, str] = {}
    for name, _ in batchnorm_layers(module):
        prefix = f"{name}." if name else ""
        hit = next((owner[p] for p in owner if p.startswith(prefix)), None)
        parent = name
        while hit is None and parent:
            parent = parent.rpartition(".")[0]
            prefix = f"{parent}." if parent else ""
            hit = next((owner[p] for p in owner if p.startswith(prefix)), None)
        if hit is not None:
            result[name] = hit
    return result


class BatchNormPolicy:
    """Applies the policy to a backbone module for a given set of trainable blocks.

    Call :meth:`apply` after setting ``requires_grad`` on the blocks and after every ``train()`` call.
    """

    def __init__(self, module: nn.Module, blocks: Sequence[Block], policy: str = DEFAULT_BN_POLICY) -> None:
        self.policy = check_bn_policy(policy)
        self.layers = dict(batchnorm_layers(module))
        self.owner = bn_block_map(module, blocks)
        self.trainable: set[str] = set()

    def set_trainable(self, trainable: Sequence[str]) -> None:
        self.trainable = set(trainable)

    def mode_of(self, block: str) -> str:
        """How BatchNorm layers in ``block`` behave, for the freeze report."""
        if block not in self.trainable:
            return FROZEN_BLOCK_MODE
        return {"frozen": "eval, γβ frozen", "affine": "eval, γβ train", "train": "train"}[self.policy]

    def block_modes(self, blocks: Sequence[Block]) -> dict[str, str]:
        with_bn = set(self.owner.values())
        return {b.name: self.mode_of(b.name) for b in blocks if b.name in with_bn}

    def apply(self, training: bool) -> None:
        """Put each BatchNorm layer in the mode the policy asks for (``training`` is the model's mode)."""
        for name, layer in self.layers.items():
            block_trains = self.owner.get(name) in self.trainable
            layer.train(training and block_trains and self.policy == "train")
            grad = block_trains and self.policy in ("affine", "train")
            for p in layer.parameters(recurse=False):
                p.requires_grad_(grad)
