"""Mixup and CutMix: image training batches mixed in pairs, their targets mixed in the same proportion.

Mixup (Zhang et al., 2018) blends two images pixel by pixel; CutMix (Yun et al., 2019) pastes a box of one into the
other. Each batch draws one mixing weight λ ~ Beta(α, α) and pairs every item with the item at the same place in the
batch reversed (timm's "batch" mode; the sampler shuffles every epoch, so the pairs change). The targets are the
one-hot labels mixed by λ (for CutMix, by the share of the image the box leaves), and the loss is cross-entropy
against these soft targets, ``label_smoothing`` applied on top. With both on, each batch uses one of the two, chosen
with probability 1/2.

Every random draw comes from torch's global generator, which the engine seeds from (seed, epoch), so a resumed run
mixes exactly the pairs and weights the uninterrupted run mixed. Only image batches (``[N, C, H, W]`` tensors) are
mixed; a run that asks for mixing on another modality is refused before anything loads.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tlkit.errors import ConfigError

if TYPE_CHECKING:
    import torch


def check_mixing(mixup: float, cutmix: float, modality: str | None = None) -> None:
    """Refuse a negative α, and mixing on a backbone whose batches are not images."""
    for name, alpha in (("mixup", mixup), ("cutmix", cutmix)):
        if alpha < 0 or not math.isfinite(alpha):
            raise ConfigError(f"{{param}} is a Beta(α, α) concentration ≥ 0 (0 = off), not {alpha}", param=name)
    if modality is not None and modality != "image" and (mixup or cutmix):
        param = "mixup" if mixup else "cutmix"
        raise ConfigError(
            f"{{param}} mixes image batches; a {modality} backbone's batches cannot be mixed: drop {{param}}",
            param=param,
        )


class BatchMixer:
    """Mixes an image batch and returns it with soft targets; ``active`` is false when both α are 0."""

    def __init__(self, mixup: float, cutmix: float, n_classes: int) -> None:
        check_mixing(mixup, cutmix)
        self.mixup, self.cutmix, self.n_classes = float(mixup), float(cutmix), int(n_classes)

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mixed inputs, soft targets [N, n_classes])``; the inputs are not modified in place."""
        import torch

        one_hot = torch.nn.functional.one_hot(labels, self.n_classes).to(torch.float32)
        if not self.active or inputs.ndim != 4 or len(labels) < 2:
            return inputs, one_hot
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or bool(torch.rand(()) < 0.5))
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        partner = inputs.flip(0)
        if use_cutmix:
            mixed, lam = _paste_box(inputs, partner, lam)
        else:
            mixed = inputs * lam + partner * (1.0 - lam)
        return mixed, one_hot * lam + one_hot.flip(0) * (1.0 - lam)


def _paste_box(inputs: torch.Tensor, partner: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """``inputs`` with a box of ``partner`` pasted in: the box covers about ``1 - lam`` of the image, centred at a
    uniform random point and clipped at the border; returns the image and the share it keeps (the exact ``lam``)."""
    import torch

    h, w = int(inputs.shape[-2]), int(inputs.shape[-1])
    cut = math.sqrt(1.0 - lam)
    bh, bw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    mixed = inputs.clone()
    mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


__all__ = ["BatchMixer", "check_mixing"]
