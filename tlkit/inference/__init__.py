"""Using a trained run: predictions and evaluation on raw items or caches, and export as a standalone model.

- :mod:`~tlkit.inference.prediction`: :func:`predict` and :func:`evaluate` for head runs and fine-tuned runs;
- :mod:`~tlkit.inference.results`: what they return, :class:`Predictions` and :class:`Evaluation`;
- :mod:`~tlkit.inference.export`: :func:`export_model`, a fine-tuned model as ONNX or TorchScript, checked.

Names load on first use, so importing the package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlkit.inference.export import export_model
    from tlkit.inference.prediction import evaluate, load_head_run, predict
    from tlkit.inference.results import Evaluation, Predictions

_LAZY = {
    "Evaluation": "tlkit.inference.results",
    "Predictions": "tlkit.inference.results",
    "evaluate": "tlkit.inference.prediction",
    "load_head_run": "tlkit.inference.prediction",
    "predict": "tlkit.inference.prediction",
    "export_model": "tlkit.inference.export",
}

__all__ = ["Evaluation", "Predictions", "evaluate", "export_model", "load_head_run", "predict"]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tlkit.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
