"""Scores of a fitted head on features: logits for training's validation, class probabilities for reports and
prediction. Torch heads and scikit-learn estimators alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tlkit.heads.tables import FeatureTable

#: Rows scored per forward pass when evaluating a head (features are small: large batches are cheap).
EVAL_BATCH = 8192


def head_probabilities(head: Any, kind: str, x: torch.Tensor, n_classes: int) -> np.ndarray:
    """Class probabilities ``[N, n_classes]`` (float64 NumPy) of a fitted head (``kind`` ``torch`` or
    ``estimator``) on features ``x``."""
    import numpy as np
    import torch

    if kind == "estimator":
        from tlkit.heads.sklearn_head import estimator_scores

        return estimator_scores(head, x.detach().cpu().numpy(), n_classes)
    with torch.no_grad():
        parts = [head(x[i : i + EVAL_BATCH]).float().softmax(1).cpu() for i in range(0, len(x), EVAL_BATCH)]
    out = torch.cat(parts) if parts else torch.zeros(0, n_classes)
    return out.numpy().astype(np.float64)


def table_probabilities(head: Any, kind: str, table: FeatureTable, n_classes: int) -> np.ndarray:
    """Class probabilities ``[N, n_classes]`` of a fitted head on a table, in row order. A streamed table is scored
    chunk by chunk rather than loaded whole (a scikit-learn estimator still takes every row at once)."""
    import numpy as np

    if kind == "estimator" or table.in_memory:
        return head_probabilities(head, kind, table.all_features(), n_classes)
    parts = [head_probabilities(head, kind, x, n_classes) for x, _ in table.batches(4096, augment=False)]
    return np.concatenate(parts) if parts else np.zeros((0, n_classes))


def table_logits(head: Any, table: FeatureTable, scale: Callable[[Any], Any] | None = None) -> torch.Tensor:
    """A torch head's float32 logits on every row of ``table``, in order, clean (no views); ``scale`` is applied to
    the features first (training's standardisation)."""
    import torch

    with torch.no_grad():
        return torch.cat([head(scale(x) if scale else x).float() for x, _ in table.batches(EVAL_BATCH, augment=False)])
