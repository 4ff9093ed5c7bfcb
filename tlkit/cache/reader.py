"""Reading a complete feature cache: :class:`FeatureCache` (lazy, h5py-backed) and :func:`load_features` (numpy)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.format import COPY_ROWS, FORMAT_VERSION, layer_key, read_meta_attr, read_strings
from tlkit.cache.storage import folder_instead_of_cache, h5py_module
from tlkit.cache.virtual import virtual_problems
from tlkit.cache.workdir import unfinished_cache
from tlkit.errors import CacheError, UnknownNameError

if TYPE_CHECKING:
    import h5py
    import numpy as np


class FeatureCache:
    """Lazy, read-only access to a complete feature cache.

    ``features``, ``layer(name)`` and ``views`` are h5py datasets (nothing is read until you slice them); ``labels``,
    ``ids`` and ``class_names`` are small and loaded on first use. Use it as a context manager, or call
    :meth:`close`.

    >>> with FeatureCache("cache.h5") as fc:                      # doctest: +SKIP
    ...     for X, y in fc.iter_batches(4096):
    ...         ...
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            why = unfinished_cache(self.path)
            raise CacheError(why or f"{self.path}: no such cache; create it with tlkit extract")
        folder = folder_instead_of_cache(self.path)
        if folder is not None:
            raise CacheError(folder)
        self._file = _open(self.path)
        try:
            self.meta: dict[str, Any] = read_meta_attr(self._file, self.path)
            if int(self.meta.get("format_version", 0)) > FORMAT_VERSION:
                raise CacheError(
                    f"{self.path}: cache format version {self.meta.get('format_version')} is newer than this tlkit "
                    f"reads ({FORMAT_VERSION}); upgrade tlkit"
                )
            if not self.meta.get("complete"):
                raise CacheError(f"{self.path} is incomplete (no completion marker); rerun tlkit extract")
            if "features" not in self._file:
                raise CacheError(f"{self.path}: no 'features' dataset; the file is damaged, re-extract it")
            if self.meta.get("virtual"):  # a virtual merge reads its parts: each must be there, unchanged
                problems = virtual_problems(self.path, self.meta)
                if problems:
                    raise CacheError(problems[0])
        except BaseException:
            self._file.close()
            raise
        self._labels: np.ndarray | None = None
        self._ids: list[str] | None = None

    # -- context manager --------------------------------------------------------------------------------------
    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r}, items={len(self)}, dim={self.dim}, backbone={self.backbone_name!r})"

    # -- data -------------------------------------------------------------------------------------------------
    @property
    def file(self) -> h5py.File:
        """The open ``h5py.File`` (read-only)."""
        return self._file

    @property
    def features(self) -> h5py.Dataset:
        """``[N, D]`` pooled embeddings (the backbone's final output)."""
        return self._file["features"]

    @property
    def labels(self) -> np.ndarray:
        """``[N]`` int64 class indices into :attr:`class_names`, -1 when unlabelled."""
        if self._labels is None:
            self._labels = self._checked_labels(self._file["labels"][()])
        return self._labels

    def _checked_labels(self, labels: np.ndarray) -> np.ndarray:
        """The labels, after checking that each is a class index or -1: a damaged or hand-edited file is an error
        that names the rows, never an index error (or a head trained on the wrong classes) later."""
        import numpy as np

        k = len(self.class_names)
        bad = np.flatnonzero((labels < -1) | (labels >= k))
        if len(bad):
            ids = self.ids
            first = ", ".join(f"{ids[i] if i < len(ids) else f'row {i}'}: {labels[i]}" for i in bad[:3].tolist())
            raise CacheError(
                f"{self.path}: {len(bad)} label index(es) outside -1..{k - 1} for its {k} class name(s) (first: "
                f"{first}); the file is damaged or was edited: check it with tlkit cache verify and re-extract it"
            )
        return labels

    @property
    def ids(self) -> list[str]:
        """``[N]`` stable item ids (relative paths, ``file.csv:line``)."""
        if self._ids is None:
            self._ids = read_strings(self._file["ids"])
        return self._ids

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def labelled(self) -> bool:
        return bool(len(self) and (self.labels >= 0).any())

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def layer_names(self) -> list[str]:
        """Names of the cached intermediate blocks, earliest first (empty unless extracted with ``--layers``)."""
        return list(self.meta.get("layers", []))

    def layer(self, name: str) -> h5py.Dataset:
        """``[N, D_b]`` pooled output of block ``name``."""
        if name not in self.layer_names:
            raise UnknownNameError(
                "cached layer", name, self.layer_names, hint="re-extract with --layers all to cache every block"
            )
        return self._file["layers"][layer_key(name)]

    @property
    def views(self) -> h5py.Dataset | None:
        """``[K, N, D]`` embeddings of K augmented views, or ``None`` when the cache has none."""
        return self._file["views"] if "views" in self._file else None

    @property
    def n_views(self) -> int:
        v = self.views
        return int(v.shape[0]) if v is not None else 0

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Items that could not be read, with reasons: ``[{"id", "reason"}]``."""
        return list(self.meta.get("skipped", []))

    # -- identity ---------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """The backbone fingerprint (weights identity, preprocessing, pooling) the features came from."""
        return str(self.meta["backbone"]["fingerprint"])

    @property
    def backbone(self) -> dict[str, Any]:
        """``{"name", "weights", "init_kwargs", "spec", "fingerprint"}``: enough to rebuild the backbone."""
        return dict(self.meta["backbone"])

    @property
    def backbone_name(self) -> str:
        return str(self.meta["backbone"]["name"])

    @property
    def precision(self) -> str:
        return str(self.meta.get("precision"))

    @property
    def store_dtype(self) -> str:
        return str(self.meta.get("store_dtype"))

    @property
    def key(self) -> dict[str, Any]:
        return dict(self.meta.get("key", {}))

    def build_backbone(self) -> Any:
        """A new (unloaded) :class:`tlkit.Backbone` built with the name and options the cache was made with."""
        from tlkit.host.api import backbone_from_record

        return backbone_from_record(self.backbone)

    # -- reading arrays ---------------------------------------------------------------------------------------
    def source(self, layer: str | None = None, view: int | None = None) -> Any:
        """The h5py dataset (or a per-view slice helper) holding the requested matrix."""
        if layer is not None and view is not None:
            raise CacheError(f"{self.path}: views store only the final features; choose a layer or a view, not both")
        if view is not None:
            views = self.views
            if views is None:
                raise CacheError(f"{self.path}: the cache has no augmented views; re-extract with --views K")
            if not 0 <= int(view) < views.shape[0]:
                raise CacheError(f"{self.path}: view {view} out of range; the cache has {views.shape[0]} views")
            return _ViewSlice(views, int(view))
        return self.layer(layer) if layer is not None else self.features

    def to_numpy(self, layer: str | None = None, view: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(X float32 [N, D], y int64 [N])`` in memory."""
        import numpy as np

        src = self.source(layer, view)
        n = len(self)
        X = np.empty((n, src.shape[-1]), np.float32)
        for a in range(0, n, COPY_ROWS):
            X[a : a + COPY_ROWS] = src[a : a + COPY_ROWS]
        return X, np.asarray(self.labels, np.int64)

    def iter_batches(
        self,
        batch_size: int = 1024,
        *,
        layer: str | None = None,
        view: int | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        with_ids: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """Yield ``(X, y)`` (or ``(X, y, ids)``) numpy batches without loading the whole cache.

        ``shuffle`` visits batches in random order and shuffles rows inside each batch: contiguous reads keep it
        fast on a disk, at the price of rows in one batch being neighbours in the file.
        """
        import numpy as np

        src = self.source(layer, view)
        labels = self.labels
        n = len(self)
        starts = np.arange(0, n, batch_size)
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(starts)
        ids = self.ids if with_ids else None
        for a in starts:
            b = min(int(a) + batch_size, n)
            X = np.asarray(src[int(a) : b], dtype=np.float32)
            y = labels[int(a) : b]
            idx = np.arange(int(a), b)
            if shuffle:
                perm = rng.permutation(b - int(a))
                X, y, idx = X[perm], y[perm], idx[perm]
            if ids is not None:
                yield X, y, [ids[i] for i in idx]
            else:
                yield X, y

    def info(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``tlkit cache info --json`` prints)."""
        return {
            "path": str(self.path),
            "items": len(self),
            "dim": self.dim,
            "store_dtype": self.store_dtype,
            "precision": self.precision,
            "backbone": self.backbone,
            "layers": {n: int(self.layer(n).shape[1]) for n in self.layer_names},
            "views": self.n_views,
            "labelled": self.labelled,
            "class_names": self.class_names,
            "skipped": self.skipped,
            "flags": self.meta.get("flags", {}),
            "dataset": self.meta.get("dataset", {}),
            "shard": self.meta.get("shard"),
            "created": self.meta.get("created"),
            "tlkit_version": self.meta.get("tlkit_version"),
            "format_version": self.meta.get("format_version"),
            "file_bytes": self.path.stat().st_size,
        }


class _ViewSlice:
    """``views[k]`` as a 2-D row-sliceable object, without reading the other views."""

    def __init__(self, views: h5py.Dataset, k: int) -> None:
        self._views, self._k = views, k
        self.shape = views.shape[1:]

    def __getitem__(self, rows: Any) -> np.ndarray:
        block: np.ndarray = self._views[self._k, rows]
        return block


def load_features(
    path: str | os.PathLike[str], layer: str | None = None, view: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` numpy arrays from a cache: ``X`` float32 ``[N, D]``, ``y`` int64 ``[N]`` (-1 when unlabelled).

    ``layer`` picks a cached intermediate block, ``view`` one of the augmented views.
    """
    with FeatureCache(path) as fc:
        return fc.to_numpy(layer=layer, view=view)


def _open(path: Path) -> h5py.File:
    try:
        return h5py_module().File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CacheError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from exc
