"""The cosine k-nearest-neighbour head: no training, a memory bank of normalised training features."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlkit.errors import ConfigError

WEIGHTINGS = ("softmax", "uniform")


class KNNHead(nn.Module):
    """Cosine k-NN: the logits are the log of the weighted class votes of the ``k`` most similar training items.

    ``weighting="softmax"`` weighs each neighbour by ``exp(similarity / temperature)``, normalised over the ``k``
    neighbours (DINO's k-NN evaluation); ``"uniform"`` gives each neighbour one vote. The memory bank (L2-normalised
    training features and their labels) is kept in buffers, so the head round-trips through safetensors.
    """

    bank: torch.Tensor
    bank_labels: torch.Tensor

    def __init__(
        self, in_dim: int, n_classes: int, k: int = 20, temperature: float = 0.07, weighting: str = "softmax"
    ) -> None:
        super().__init__()
        if int(k) < 1:
            raise ConfigError(f"knn head: k must be at least 1, not {k}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"knn head: weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
        if float(temperature) <= 0:
            raise ConfigError(f"knn head: temperature must be positive, not {temperature}")
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.k, self.temperature, self.weighting = int(k), float(temperature), weighting
        self.register_buffer("bank", torch.zeros(0, self.in_dim))
        self.register_buffer("bank_labels", torch.zeros(0, dtype=torch.long))

    @torch.no_grad()
    def fit_features(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Store the L2-normalised training features and their labels."""
        self.bank = nn.functional.normalize(x.float(), dim=1).to(self.bank.device)
        self.bank_labels = y.long().to(self.bank.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The bank's size is only known from the saved file: resize the buffers before torch's strict copy.
        for name in ("bank", "bank_labels"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bank.shape[0] == 0:
            raise ConfigError("knn head has no training features; fit it first (tlkit train --head knn)")
        sims = nn.functional.normalize(x.float(), dim=1) @ self.bank.T
        k = min(self.k, self.bank.shape[0])
        top, idx = sims.topk(k, dim=1)
        weights = (top / self.temperature).softmax(dim=1) if self.weighting == "softmax" else torch.ones_like(top)
        votes = torch.zeros(x.shape[0], self.n_classes, device=x.device, dtype=weights.dtype)
        votes.scatter_add_(1, self.bank_labels[idx], weights)
        votes = votes / votes.sum(dim=1, keepdim=True)
        return votes.clamp_min(1e-8).log()

    def extra_repr(self) -> str:
        return f"k={self.k}, temperature={self.temperature}, weighting={self.weighting!r}, bank={len(self.bank)}"
