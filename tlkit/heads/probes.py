"""AdamW for heads, and many linear probes trained at once.

:class:`LinearProbeBank`: one pass over the data updates a whole grid of learning rates and weight decays (as
DINOv2's linear evaluation does), each probe with its own AdamW state. The weights are one tensor ``[P, C, D]``;
each batch is multiplied by all of them in one matrix product, the per-probe losses are summed (so each probe gets
exactly its own gradient) and a vectorised AdamW step applies each probe's learning rate and decoupled weight decay.
Probe ``p`` follows the trajectory a lone ``nn.Linear`` trained with ``torch.optim.AdamW`` at ``lrs[p]``, ``wds[p]``
would follow, from the same initial weights and batches.

:class:`HeadAdamW` is the same update for an ordinary head. Heads train in a fraction of a second, so the few seconds
``torch.optim`` spends importing ``torch._dynamo`` on first use would dominate ``tlkit train``; this update needs no
import and matches ``torch.optim.AdamW`` (a test checks both against it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ProbeScore:
    """One grid cell after training: its best validation epoch and scores there (for a cross-validated sweep, the
    epoch with the best mean over the folds, and the means)."""

    lr: float
    weight_decay: float
    best_epoch: int
    val_accuracy: float
    val_loss: float
    #: the standard deviation of the accuracy over the folds, when the scores are cross-validated means
    val_accuracy_std: float | None = None

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "best_epoch": self.best_epoch,
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
        }
        if self.val_accuracy_std is not None:
            out["val_accuracy_std"] = self.val_accuracy_std
        return out


class LinearProbeBank:
    """``P`` linear probes sharing the input, trained in lock-step.

    :param init: an ``nn.Linear(in_dim, n_classes)`` whose weights every probe starts from (a fair comparison).
    :param lrs: learning rate per probe; ``wds``: decoupled weight decay per probe (AdamW).
    """

    def __init__(
        self,
        init: nn.Linear,
        lrs: Sequence[float],
        wds: Sequence[float],
        device: torch.device,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if len(lrs) != len(wds) or not lrs:
            raise ValueError("lrs and wds must be non-empty and of equal length")
        p = len(lrs)
        self.weight = init.weight.detach().to(device).unsqueeze(0).repeat(p, 1, 1).contiguous()  # [P, C, D]
        self.bias = init.bias.detach().to(device).unsqueeze(0).repeat(p, 1).contiguous()  # [P, C]
        self.lrs = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.wds = torch.tensor(list(wds), dtype=torch.float32, device=device)
        self.betas, self.eps = betas, eps
        self.step_count = 0
        self._m = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]
        self._v = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]

    @property
    def size(self) -> int:
        return int(self.weight.shape[0])

    def logits(
        self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[P, N, C]`` logits of every probe, from one ``[N, D] x [D, P*C]`` matrix product (several times faster
        than a batched matmul over an expanded input)."""
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        p, c, d = w.shape
        return (x @ w.reshape(p * c, d).T).reshape(len(x), p, c).permute(1, 0, 2) + b.unsqueeze(1)

    def losses(self, logits: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy of each probe ``[P]`` (weighted like ``nn.CrossEntropyLoss(weight=...)``)."""
        p, n, c = logits.shape
        per_item = nn.functional.cross_entropy(
            logits.reshape(p * n, c), y.repeat(p), weight=class_weight, reduction="none"
        ).reshape(p, n)
        if class_weight is None:
            return per_item.mean(dim=1)
        return per_item.sum(dim=1) / class_weight[y].sum()

    def step(
        self, x: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One AdamW step of every probe on a batch; returns each probe's loss ``[P]`` and logits ``[P, N, C]``
        from before the step."""
        w = self.weight.requires_grad_(True)
        b = self.bias.requires_grad_(True)
        logits = self.logits(x, w, b)
        loss = self.losses(logits, y, class_weight)
        gw, gb = torch.autograd.grad(loss.sum(), (w, b))
        self.weight, self.bias = w.detach(), b.detach()
        self.step_count += 1
        for i, (param, grad) in enumerate(((self.weight, gw), (self.bias, gb))):
            shape = (-1,) + (1,) * (param.dim() - 1)
            adamw_update(
                param, grad, self._m[i], self._v[i], self.step_count, self.lrs.view(shape), self.wds.view(shape),
                self.betas, self.eps,
            )  # fmt: skip
        return loss.detach(), logits.detach()

    def state(self, index: int) -> dict[str, torch.Tensor]:
        """Probe ``index`` as an ``nn.Linear`` state dict."""
        return {"weight": self.weight[index].detach().clone(), "bias": self.bias[index].detach().clone()}


def adamw_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: int,
    lr: float | torch.Tensor,
    weight_decay: float | torch.Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One in-place AdamW step (decoupled weight decay), the arithmetic of ``torch.optim.AdamW``; ``lr`` and
    ``weight_decay`` may be tensors that broadcast against ``param`` (one value per probe)."""
    b1, b2 = betas
    bias1 = 1 - b1**step
    bias2_sqrt = (1 - b2**step) ** 0.5
    param.mul_(1 - lr * weight_decay)
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v.sqrt() / bias2_sqrt).add_(eps)
    if isinstance(lr, torch.Tensor):
        param.sub_(m / denom * (lr / bias1))
    else:
        param.addcdiv_(m, denom, value=-lr / bias1)


class HeadAdamW:
    """AdamW over a head's parameters, with the ``zero_grad``/``step`` interface of ``torch.optim``."""

    def __init__(
        self,
        params: Sequence[torch.Tensor] | Any,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, eps
        self.step_count = 0
        self._m = [torch.zeros_like(p) for p in self.params]
        self._v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        for p, m, v in zip(self.params, self._m, self._v, strict=True):
            if p.grad is not None:
                adamw_update(p, p.grad, m, v, self.step_count, self.lr, self.weight_decay, self.betas, self.eps)
