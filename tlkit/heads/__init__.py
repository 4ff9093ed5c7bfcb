"""Heads on cached features: the torch heads, the scikit-learn bridge, probes and head training.

- :mod:`~tlkit.heads.torch_heads`, :mod:`~tlkit.heads.knn`, :mod:`~tlkit.heads.sklearn_head`: the heads themselves
  (:func:`build_head` builds any registered head by name);
- :mod:`~tlkit.heads.options`: what :func:`train_head` accepts (:class:`TrainOptions`, :class:`TrainEvent`);
- :mod:`~tlkit.heads.sources`, :mod:`~tlkit.heads.tables`: features and labels from caches, as training tables;
- :mod:`~tlkit.heads.fit`, :mod:`~tlkit.heads.sweep`, :mod:`~tlkit.heads.probes`: fitting one head, or a grid of
  linear probes at once (and the choice of layer);
- :mod:`~tlkit.heads.scoring`: a fitted head's probabilities on features;
- :mod:`~tlkit.heads.record`: what a head run's directory records;
- :mod:`~tlkit.heads.api`: :func:`train_head` and :class:`TrainResult`.

Importing the package does not import torch.
"""

from tlkit.heads.api import TrainResult, train_head
from tlkit.heads.options import TrainEvent, TrainOptions
from tlkit.heads.scoring import head_probabilities
from tlkit.heads.sources import remap_labels
from tlkit.heads.torch_heads import build_head, parse_params

__all__ = [
    "TrainEvent",
    "TrainOptions",
    "TrainResult",
    "build_head",
    "head_probabilities",
    "parse_params",
    "remap_labels",
    "train_head",
]
