"""Training data for heads from feature caches: which layers, which rows, labels in one class order, checks that a
validation cache matches the training cache."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, FingerprintMismatchError
from tlkit.heads.options import AUTO_LAYER, FINAL

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tlkit.heads.tables import FeatureSource, FeatureTable


def open_cache(cache: Any, stack: contextlib.ExitStack) -> tuple[Any, Path]:
    """An open cache and its path: a path is opened (and closed with ``stack``); an open cache is used as is."""
    if hasattr(cache, "features"):
        return cache, Path(getattr(cache, "path", "<cache>"))
    from tlkit.cache import FeatureCache

    path = Path(cache)
    return stack.enter_context(FeatureCache(path)), path


def remap_labels(
    labels: np.ndarray, names: Sequence[str], target: Sequence[str], *, where: object, whose: str, fix: str
) -> np.ndarray:
    """Labels that index ``names`` re-indexed in the class order ``target``, matched by class name (``-1``, no
    label, stays ``-1``). A class missing from ``target`` is a :class:`BadInputError` that says ``where`` it was
    found, ``whose`` classes it is not among (``"the run's"``) and the ``fix``."""
    import numpy as np

    index = {c: i for i, c in enumerate(target)}
    unknown = [c for c in names if c not in index]
    if unknown:
        raise BadInputError(
            f"{where}: class(es) {', '.join(unknown)} are not among {whose} classes ({', '.join(target)}); {fix}"
        )
    remap = np.array([index[c] for c in names], dtype=np.int64)
    return np.where(labels >= 0, remap[np.clip(labels, 0, None)], -1)


def feature_source(
    cache: Any, layer: str | None, path: Path, class_names: Sequence[str] | None = None
) -> FeatureSource:
    """The features of ``layer`` in ``cache`` with labels; ``class_names`` remaps a val cache's labels by name."""
    import numpy as np

    from tlkit.heads.tables import FeatureSource

    names = [str(c) for c in cache.class_names]
    labels = np.asarray(cache.labels[:], dtype=np.int64)
    if class_names is not None and names != list(class_names):
        labels = remap_labels(
            labels, names, class_names, where=path, whose="the training", fix="validate on the same classes"
        )
        names = list(class_names)
    features = cache.features if layer is None else cache.layer(layer)
    views = cache.views if layer is None else None
    ids = (lambda: cache.ids) if hasattr(cache, "ids") else None
    return FeatureSource(str(path), features, labels, names, views, ids)


def candidate_layers(cache: Any, layer: str | None, path: Path) -> list[str | None]:
    """``[None]`` for the final features, ``[name]`` for one layer, every cached layer plus the final one for auto."""
    available = list(cache.layer_names)
    if layer is None or layer == FINAL:
        return [None]
    if layer == AUTO_LAYER:
        if not available:
            raise BadInputError(
                f"{path}: {{param}} auto needs cached layers, and this cache has none; extract with --layers all",
                param="layer",
            )
        return [*available, None]
    if layer not in available:
        from tlkit.errors import UnknownNameError

        hint = "extract with --layers all to cache every block" if not available else f"cached in {path}"
        raise UnknownNameError("layer", layer, available, hint=hint)
    return [layer]


def check_same_features(train: Any, val: Any, train_path: Path, val_path: Path) -> None:
    """A validation cache must hold features of the same backbone, weights and preprocessing."""
    if train.fingerprint != val.fingerprint:
        raise FingerprintMismatchError(
            f"{{param}} {val_path}: its features come from backbone fingerprint {val.fingerprint}, but {train_path} "
            f"has {train.fingerprint}; extract both with the same backbone, weights and preprocessing",
            param="val",
        )


def check_classes_present(table: FeatureTable, path: Path) -> None:
    import torch

    counts = torch.bincount(table.y.cpu(), minlength=len(table.source.class_names))
    if int((counts > 0).sum()) < 2:
        raise BadInputError(f"{path}: the training rows hold fewer than two classes; a classifier needs at least two")


class TrainingData:
    """The training cache, cut per layer into a training table and a validation table.

    Validation rows come from ``val_cache`` (labels remapped to the training classes by name), or a stratified
    share ``val_split`` of the training rows, or there are none.
    """

    def __init__(
        self,
        train: tuple[Any, Path],
        val: tuple[Any, Path] | None,
        val_split: float | None,
        *,
        seed: int,
        device: torch.device,
        in_memory: bool | None,
        views: bool,
    ) -> None:
        (self.cache, self.path), self.val = train, val
        self.val_split, self.seed, self.device, self.in_memory, self.views = val_split, seed, device, in_memory, views
        if val is not None:
            check_same_features(self.cache, val[0], self.path, val[1])

    def __call__(self, layer: str | None) -> tuple[FeatureTable, FeatureTable | None]:
        """The (training, validation) tables of ``layer`` (``None``: the final features)."""
        from tlkit.heads.tables import labelled_rows, split_rows

        source = feature_source(self.cache, layer, self.path)
        rows = labelled_rows(source)
        if self.val is not None:
            vsource = feature_source(self.val[0], layer, self.val[1], class_names=source.class_names)
            return self._table(source, rows, self.views), self._table(vsource, labelled_rows(vsource))
        if self.val_split:
            train_rows, val_rows = split_rows(source, rows, float(self.val_split), self.seed)
            return self._table(source, train_rows, self.views), self._table(source, val_rows)
        return self._table(source, rows, self.views), None

    def _table(self, source: FeatureSource, rows: np.ndarray, views: bool = False) -> FeatureTable:
        from tlkit.heads.tables import FeatureTable

        return FeatureTable(source, rows, self.device, in_memory=self.in_memory, use_views=views)
