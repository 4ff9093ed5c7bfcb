"""scikit-learn glue: :class:`TlkitEmbedder`, a transformer that turns item paths or texts into embeddings, and
:func:`iter_batches` / :func:`partial_fit` for training incremental estimators on caches larger than memory.

It follows the estimator conventions (``__init__`` only stores arguments, fitted state ends in ``_``, ``fit`` returns
``self``) so it can be cloned, grid-searched and put in a :class:`~sklearn.pipeline.Pipeline`. Embeddings are
computed once and reused: with ``cache="emb.h5"`` through the HDF5 feature cache (shared across clones, processes
and sessions); with ``cache=None`` through an in-process store shared by clones. So ``cross_val_score`` over five
folds embeds each item once, not five times.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from tlkit.contract.backbone import Backbone
from tlkit.data.base import Dataset, Reader, Record
from tlkit.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    import numpy as np

    from tlkit.cache import FeatureCache
    from tlkit.runtime import Runtime


class ItemsError(BadInputError, ValueError):
    """Input that is not a 1-D list of item paths or texts (a ``ValueError`` too, as scikit-learn expects)."""


#: In-process embedding store for ``cache=None``: run key -> item id -> vector. Shared by clones of an embedder.
_MEMORY: dict[str, dict[str, Any]] = {}


_NUMERIC = "feeds numeric 2-D arrays; TlkitEmbedder takes a 1-D list of item paths or texts"
#: scikit-learn checks that fail by design, with the reason: they call ``fit``/``transform`` on numeric matrices.
#: The API checks (cloning, get/set_params, repr, no work in __init__, unfitted errors, sparse refusal) pass.
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    name: _NUMERIC
    for name in (
        "check_complex_data",
        "check_dict_unchanged",
        "check_dont_overwrite_parameters",
        "check_dtype_object",
        "check_estimators_dtypes",
        "check_estimators_empty_data_messages",
        "check_estimators_fit_returns_self",
        "check_estimators_nan_inf",
        "check_estimators_overwrite_params",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_fit2d_1feature",
        "check_fit2d_1sample",
        "check_fit2d_predict1d",
        "check_fit_check_is_fitted",
        "check_fit_idempotent",
        "check_fit_score_takes_y",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_n_features_in",
        "check_n_features_in_after_fitting",
        "check_pipeline_consistency",
        "check_positive_only_tag_during_fit",
        "check_readonly_memmap_input",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
        "check_transformer_preserve_dtypes",
    )
}


class ItemsReader(Reader):
    """Reads items given directly: texts as themselves, paths through the modality's registered reader."""

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.name = f"items:{modality}"

    def load(self, record: Record) -> Any:
        if self.modality == "text":
            return record.source
        from tlkit.host.registry import get_registry

        readers = get_registry().readers
        # items given directly are file paths: the modality's file reader (named after the modality) reads them,
        # not a stream reader (WebDataset, Parquet, ...) whose records point into shards or tables
        entry = readers.get(self.modality)
        if entry is not None and entry.modality == self.modality:
            return entry.reader.load(record)
        raise BadInputError(f"no reader is installed for {self.modality} data")


def item_records(items: Iterable[Any], modality: str) -> list[Record]:
    """One record per input item: a text (id ``text:<sha1>``) or a path (id: the absolute path, stamped with size
    and mtime so that an edited file is re-embedded)."""
    out = []
    for i, item in enumerate(items):
        if modality == "text":
            if not isinstance(item, str):
                raise ItemsError(f"item {i}: expected a string for a text backbone, got {type(item).__name__}")
            digest = hashlib.sha1(item.encode("utf-8")).hexdigest()
            out.append(Record(f"text:{digest}", item, length=len(item), stamp=digest[:16]))
            continue
        if not isinstance(item, str | os.PathLike):
            raise ItemsError(f"item {i}: expected a file path for a {modality} backbone, got {type(item).__name__}")
        p = Path(item).expanduser().resolve()
        try:
            st = p.stat()
        except OSError:
            raise ItemsError(f"{item}: no such file; TlkitEmbedder needs existing {modality} file paths") from None
        out.append(Record(str(p), str(p), stamp=f"{st.st_size}:{st.st_mtime_ns}"))
    return out


class TlkitEmbedder(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # scikit-learn ships no types
    """Embed item paths (images, audio) or texts with a tlkit backbone.

    Parameters
    ----------
    backbone : str or Backbone
        Required. A backbone name (``timm/resnet50``, ``hf/…``) or an unloaded :class:`tlkit.Backbone`.
    cache : path or None
        An HDF5 feature cache to reuse embeddings across clones, processes and sessions. ``None`` keeps them in
        process memory (cleared by :meth:`clear_memory`).
    weights, device, precision, batch_size, workers :
        As for :func:`tlkit.extract`. ``workers=0`` decodes in-process, which suits small jobs.
    layer : str or None
        Return this cached block's pooled output instead of the final embedding.
    backbone_options : dict or None
        Extra options for the backbone (``pooling``, ``preprocess`` overrides, ...).
    """

    def __init__(
        self,
        backbone: str | Backbone | None = None,
        *,
        cache: str | os.PathLike[str] | None = None,
        weights: str = "pretrained",
        layer: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | str = "auto",
        workers: int | str = 0,
        backbone_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.backbone = backbone
        self.cache = cache
        self.weights = weights
        self.layer = layer
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.workers = workers
        self.backbone_options = backbone_options

    # -- sklearn protocol -------------------------------------------------------------------------------------
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    def fit(self, X: Iterable[Any], y: Any = None) -> TlkitEmbedder:
        """Resolve the backbone (without loading weights). Embedding happens in :meth:`transform`."""
        items = self._items(X)
        self.backbone_ = self._make_backbone()
        self.modality_ = self.backbone_.modality
        item_records(items, self.modality_)  # validates item types (and that paths exist) early
        self.embed_dim_ = int(self.backbone_.spec.embed_dim)
        self.n_items_seen_ = len(items)
        return self

    def transform(self, X: Iterable[Any]) -> Any:
        """``[n, D]`` float32 embeddings, one row per item, in input order."""
        import numpy as np

        check_is_fitted(self, "backbone_")
        items = self._items(X)
        records = item_records(items, self.modality_)
        unique = list({r.id: r for r in records}.values())
        if self.cache is None:
            vectors = self._embed_in_memory(unique)
            out = np.stack([vectors[r.id] for r in records]) if records else np.zeros((0, self.embed_dim_))
            return out.astype(np.float32, copy=False)
        return self._embed_with_cache(self.cache, unique, records)

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        import numpy as np

        check_is_fitted(self, "backbone_")
        return np.asarray([f"tlkit{i}" for i in range(self.embed_dim_)], dtype=object)

    @staticmethod
    def clear_memory() -> None:
        """Forget the in-process embeddings kept for ``cache=None``."""
        _MEMORY.clear()

    # -- internals --------------------------------------------------------------------------------------------
    def _items(self, X: Iterable[Any]) -> list[Any]:
        import numpy as np

        if isinstance(X, str | os.PathLike):
            raise ItemsError("TlkitEmbedder takes a list of items (paths or texts), not a single string")
        if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
            raise ItemsError("TlkitEmbedder does not take sparse input; pass a 1-D list of item paths or texts")
        arr = np.asarray(X, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]  # a one-column frame or array
        if arr.ndim != 1:
            raise ItemsError(
                f"TlkitEmbedder takes a 1-D list of item paths or texts, got an array of shape {arr.shape}"
            )
        if len(arr) == 0:
            raise ItemsError("TlkitEmbedder got no items (an empty list); pass at least one path or text")
        return list(arr)

    def _make_backbone(self) -> Backbone:
        opts = dict(self.backbone_options or {})
        if self.backbone is None:
            raise ConfigError("TlkitEmbedder needs backbone=NAME (see tlkit backbones) or a tlkit.Backbone")
        if isinstance(self.backbone, Backbone):
            return self.backbone.replace(**opts) if opts else self.backbone
        if not isinstance(self.backbone, str):
            raise ConfigError(f"backbone must be a name or a tlkit.Backbone, not {type(self.backbone).__name__}")
        from tlkit.host.api import get_backbone

        return get_backbone(self.backbone, weights=self.weights, **opts)

    def _runtime(self) -> Runtime:
        """Where and how the embeddings are computed, resolved as :func:`tlkit.extract` resolves them."""
        from tlkit.runtime import RuntimeOptions, resolve

        return resolve("extract", RuntimeOptions.of(self.device, self.precision, self.batch_size, self.workers))

    def _embed_in_memory(self, records: list[Record]) -> dict[str, Any]:
        from tlkit.extraction import embed_records

        runtime = self._runtime()
        store = _MEMORY.setdefault(f"{self.backbone_.fingerprint()}:{runtime.precision}:{self.layer}", {})
        todo = [r for r in records if r.id not in store]
        if todo:
            if self.layer is not None:
                raise ConfigError(
                    "{param} needs a cache file (cache='emb.h5'); memory keeps only final features", param="layer"
                )
            X, kept, skipped = embed_records(
                self.backbone_, todo, ItemsReader(self.modality_), runtime=runtime, on_error="fail"
            )
            for row, pos in enumerate(kept):
                store[todo[pos].id] = X[row]
        return store

    def _embed_with_cache(self, cache: str | os.PathLike[str], unique: list[Record], records: list[Record]) -> Any:
        import numpy as np

        from tlkit.cache import COPY_ROWS, FeatureCache
        from tlkit.extraction import extract

        dataset = Dataset(Path("<items>"), f"items:{self.modality_}", self.modality_, unique, [])
        extract(
            self.backbone_, dataset, cache, device=self.device, precision=self.precision,
            batch_size=self.batch_size, workers=self.workers, layers=[self.layer] if self.layer else "last",
            on_error="fail", reader=ItemsReader(self.modality_), keep_existing=True, lock_timeout=600.0,
        )  # fmt: skip
        with FeatureCache(cache) as fc:
            index = {i: r for r, i in enumerate(fc.ids)}
            rows = np.asarray([index[r.id] for r in records], np.int64)
            src = fc.source(layer=self.layer)
            out = np.empty((len(rows), src.shape[-1]), np.float32)
            order = np.argsort(rows, kind="stable")
            for a in range(0, len(rows), COPY_ROWS):
                sel = order[a : a + COPY_ROWS]
                want = rows[sel]
                uniq, inverse = np.unique(want, return_inverse=True)
                out[sel] = src[uniq][inverse]
        return out


# -- caches larger than memory: batches for ``partial_fit`` ------------------------------------------------------------
#: Rows per batch read from a cache for :func:`partial_fit` (about 12 MB of 768-wide float32 features).
BATCH_ROWS = 4096


def iter_batches(
    cache: str | os.PathLike[str] | FeatureCache,
    batch_size: int = BATCH_ROWS,
    *,
    layer: str | None = None,
    view: int | None = None,
    shuffle: bool = True,
    seed: int | None = 0,
    labelled: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(X float32 [n, D], y int64 [n])`` batches of a feature cache, read block by block: memory holds one batch
    whatever the cache's size. ``shuffle`` visits the blocks in a random order and shuffles the rows inside each
    (contiguous reads stay fast on disk); ``labelled`` leaves out unlabelled rows (``y == -1``). ``y`` indexes the
    cache's ``class_names``."""
    from tlkit.cache import FeatureCache

    if int(batch_size) < 1:
        raise ConfigError(f"{{param}} must be positive, not {batch_size}", param="batch_size")
    with contextlib.ExitStack() as stack:
        fc = cache if isinstance(cache, FeatureCache) else stack.enter_context(FeatureCache(cache))
        for X, y in fc.iter_batches(int(batch_size), layer=layer, view=view, shuffle=shuffle, seed=seed):
            if labelled:
                keep = y >= 0
                if not keep.all():
                    X, y = X[keep], y[keep]
            if len(y):
                yield X, y


def partial_fit(
    estimator: Any,
    cache: str | os.PathLike[str] | FeatureCache,
    *,
    epochs: int = 1,
    batch_size: int = BATCH_ROWS,
    layer: str | None = None,
    view: int | None = None,
    seed: int | None = 0,
) -> Any:
    """Train a scikit-learn estimator that learns incrementally (``SGDClassifier``, ``Perceptron``,
    ``PassiveAggressiveClassifier``, ``GaussianNB``, ``MultinomialNB`` on non-negative features, ``MLPClassifier``;
    ``MiniBatchKMeans``, ``IncrementalPCA``; ``SGDRegressor``) on a cache of any size: ``epochs`` passes of
    :func:`iter_batches`, one ``estimator.partial_fit`` call per batch. Classifiers get every class of the cache
    (``classes=range(len(class_names))``) on the first call, so ``estimator.classes_`` are indices into the cache's
    ``class_names``; unsupervised estimators get ``X`` only, and unlabelled rows too. Returns ``estimator``.

    Use it when ``tlkit.load_features`` would not fit in memory; for smaller caches ``fit`` on all rows is simpler
    (``tlkit train --head sklearn:...`` does that)."""
    import numpy as np
    from sklearn.base import is_classifier, is_regressor

    from tlkit.cache import FeatureCache

    if not callable(getattr(estimator, "partial_fit", None)):
        raise ConfigError(
            f"{type(estimator).__name__} has no partial_fit, so it cannot learn batch by batch; use one that does "
            f"(SGDClassifier, Perceptron, GaussianNB, MultinomialNB, MiniBatchKMeans, IncrementalPCA), or "
            f"tlkit.load_features and fit when the cache fits in memory"
        )
    if int(epochs) < 1:
        raise ConfigError(f"{{param}} must be positive, not {epochs}", param="epochs")
    classifier, supervised = is_classifier(estimator), is_classifier(estimator) or is_regressor(estimator)
    with contextlib.ExitStack() as stack:
        fc = cache if isinstance(cache, FeatureCache) else stack.enter_context(FeatureCache(cache))
        if supervised and not fc.labelled:
            raise BadInputError(f"{fc.path}: the cache has no labels; {type(estimator).__name__} learns from labels")
        classes = np.arange(len(fc.class_names))
        for epoch in range(int(epochs)):
            batches = iter_batches(fc, batch_size, layer=layer, view=view, shuffle=True, labelled=supervised,
                                   seed=None if seed is None else int(seed) + epoch)  # fmt: skip
            for X, y in batches:
                try:
                    if classifier:
                        estimator.partial_fit(X, y, classes=classes)
                    elif supervised:
                        estimator.partial_fit(X, y)
                    else:
                        estimator.partial_fit(X)
                except ValueError as exc:
                    raise ConfigError(
                        f"{type(estimator).__name__}.partial_fit on {fc.path} failed: {str(exc).splitlines()[0]}"
                    ) from exc
    return estimator
