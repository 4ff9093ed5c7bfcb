"""Run directories and what uses them: the transfer model, checkpoints, predict, evaluate, export, plots, advice.

- :mod:`~tlkit.runs.rundir`: the run directory's layout, config, weights and metrics files;
- :mod:`~tlkit.runs.model`: :class:`TransferModel`, a backbone and a head as one module, rebuilt from a run;
- :mod:`~tlkit.runs.inference`: :func:`predict` and :func:`evaluate` with a head run or a fine-tuned run;
- :mod:`~tlkit.runs.predictions`: what they return, :class:`Predictions` and :class:`Evaluation`;
- :mod:`~tlkit.runs.metrics`, :mod:`~tlkit.runs.plots`: reports and their figures;
- :mod:`~tlkit.runs.export`: a fine-tuned model as ONNX or TorchScript;
- :mod:`~tlkit.runs.advice`: :func:`advise`, which route to take (extraction or fine-tuning) for a dataset.

Names load on first use, so importing the package (or :mod:`tlkit.runs.rundir`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlkit.runs.advice import advise
    from tlkit.runs.export import export_model
    from tlkit.runs.inference import evaluate, load_head_run, predict
    from tlkit.runs.model import TransferModel
    from tlkit.runs.predictions import Evaluation, Predictions

_LAZY = {
    "Evaluation": "tlkit.runs.predictions",
    "Predictions": "tlkit.runs.predictions",
    "evaluate": "tlkit.runs.inference",
    "load_head_run": "tlkit.runs.inference",
    "predict": "tlkit.runs.inference",
    "TransferModel": "tlkit.runs.model",
    "export_model": "tlkit.runs.export",
    "advise": "tlkit.runs.advice",
}

__all__ = [
    "Evaluation",
    "Predictions",
    "TransferModel",
    "advise",
    "evaluate",
    "export_model",
    "load_head_run",
    "predict",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tlkit.runs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
