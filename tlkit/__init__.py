"""tlkit: transfer learning with pretrained backbones, cached features, heads and fine-tuning.

The public API is flat and lazy: ``import tlkit`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from tlkit.errors import TlkitError
from tlkit.host.hookspecs import hookimpl

try:
    from importlib.metadata import version as _version

    __version__ = _version("tlkit")
except Exception:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY = {
    "Backbone": "tlkit.contract.backbone",
    "BackboneSpec": "tlkit.contract.backbone",
    "Block": "tlkit.contract.backbone",
    "get_backbone": "tlkit.host.api",
    "list_backbones": "tlkit.host.api",
    "list_heads": "tlkit.host.api",
    "open_dataset": "tlkit.host.readers",
    "Dataset": "tlkit.data",
    "Reader": "tlkit.data",
    "Record": "tlkit.data",
    "build_head": "tlkit.heads",
    "extract": "tlkit.extraction",
    "ExtractResult": "tlkit.extraction",
    "load_features": "tlkit.cache",
    "FeatureCache": "tlkit.cache",
    "merge_caches": "tlkit.cache",
    "verify_cache": "tlkit.cache",
    "register_plugin": "tlkit.host.manager",
    "unregister_plugin": "tlkit.host.manager",
    "list_plugins": "tlkit.host.api",
    # heads on cached features; prediction, evaluation and export (tests/test_layout.py checks that no submodule
    # shadows a public function)
    "train_head": "tlkit.heads",
    "TrainResult": "tlkit.heads",
    "predict": "tlkit.inference",
    "evaluate": "tlkit.inference",
    "Predictions": "tlkit.inference",
    "Evaluation": "tlkit.inference",
    "run_demo": "tlkit.demo",
    # fine-tuning (the package is tlkit.finetuning, so no submodule shadows the tlkit.finetune function)
    "finetune": "tlkit.finetuning",
    "FinetuneResult": "tlkit.finetuning",
    "TransferModel": "tlkit.finetuning",
    "lr_find": "tlkit.finetuning",
    "advise": "tlkit.finetuning",
    "export_model": "tlkit.inference",
}

__all__ = ["TlkitError", "__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
