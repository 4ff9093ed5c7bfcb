"""Fine-tuning: unfreeze chosen blocks of a backbone and train them with its head on raw items.

The public surface is :func:`finetune` (one process, or DDP under torchrun), its :class:`FinetuneOptions`,
:class:`FinetuneEvent` and :class:`FinetuneResult`, the learning-rate range test :func:`lr_find`,
:func:`freeze_preview`, :class:`TransferModel` (a backbone and a head as one module, rebuilt from a run) and
:func:`advise` (extraction or fine-tuning, for a dataset).

The modules, by concern: ``options`` (what a run is given), ``prepare`` (backbone, data, model, plan), ``engine``
(the training loop), ``evaluation`` (validation, best epoch, early stopping), ``distributed`` (DDP only),
``freeze``/``schedule``/``optim``/``bn`` (blocks, phases, rates, BatchNorm), ``data`` (loaders), ``state``/``run_files``
(checkpoints and the run directory), ``model``, ``advice``, ``lrfind``.

Importing this package imports nothing heavy: the names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlkit.finetuning.advice import Advice, advise
    from tlkit.finetuning.api import finetune
    from tlkit.finetuning.freeze import FreezeRow, freeze_preview
    from tlkit.finetuning.lrfind import LRFindResult, lr_find
    from tlkit.finetuning.model import TransferModel
    from tlkit.finetuning.options import FinetuneOptions
    from tlkit.finetuning.result import FinetuneEvent, FinetuneResult

_LAZY = {
    "finetune": "tlkit.finetuning.api",
    "FinetuneOptions": "tlkit.finetuning.options",
    "FinetuneEvent": "tlkit.finetuning.result",
    "FinetuneResult": "tlkit.finetuning.result",
    "FreezeRow": "tlkit.finetuning.freeze",
    "freeze_preview": "tlkit.finetuning.freeze",
    "lr_find": "tlkit.finetuning.lrfind",
    "LRFindResult": "tlkit.finetuning.lrfind",
    "TransferModel": "tlkit.finetuning.model",
    "Advice": "tlkit.finetuning.advice",
    "advise": "tlkit.finetuning.advice",
}

__all__ = [
    "Advice",
    "FinetuneEvent",
    "FinetuneOptions",
    "FinetuneResult",
    "FreezeRow",
    "LRFindResult",
    "TransferModel",
    "advise",
    "finetune",
    "freeze_preview",
    "lr_find",
]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
