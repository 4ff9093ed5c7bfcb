"""Helpers for the vision parity tests: reading images through tlkit, cosines, parity reports, BatchNorm statistics.

The data they run on (photos, Fashion-MNIST) comes from ``_data.py``; the fixtures that give it from ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_with_tlkit(folder: Path) -> tuple[list[str], list[Any]]:
    """Scan ``folder`` with tlkit's image reader and decode every item: ``(ids, PIL images)``."""
    from tlkit.data.image import ImageReader

    reader = ImageReader()
    dataset = reader.scan(folder)
    return [r.id for r in dataset.records], [reader.load(r) for r in dataset.records]


def cosines(a: Any, b: Any) -> Any:
    """Row-wise cosine similarity in float64."""
    import torch

    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def report_parity(label: str, cos: Any) -> float:
    """Print the smallest cosine of a parity check (``pytest -s`` shows it) and return it."""
    worst = float(cos.min())
    print(f"parity {label}: min cosine {worst:.10f} (1 - cos = {1 - worst:.1e})")
    return worst


def randomize_batchnorm(model: Any, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial running statistics, so loading a file is checked on them too."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
