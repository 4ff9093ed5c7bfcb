"""Assembling rows from several files (work-folder segments, an older cache, merge parts) into one complete cache.

Memory stays flat in N: rows are copied in blocks of ``COPY_ROWS``, and at most a few source files are open at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.format import COPY_ROWS, LIBVER, META_ATTR, dumps, layer_key
from tlkit.cache.storage import (
    as_str_array,
    chunk_rows,
    estimate_bytes,
    h5py_module,
    le_bytes,
    reserve,
    str_dtype,
    write_error,
)
from tlkit.errors import CacheError
from tlkit.runtime.progress import ProgressCallback, ProgressEvent, emit

if TYPE_CHECKING:
    import h5py
    import numpy as np


@dataclass
class AssemblyPlan:
    """Which source file and row every output row comes from, plus the per-row data that is not copied."""

    sources: list[Path]
    src: np.ndarray  # [N] index into sources
    rows: np.ndarray  # [N] row in that source
    ids: Sequence[str]  # a list, or PackedStrings (tlkit.data.records): no string object per row
    labels: np.ndarray
    stamps: Sequence[str]


class _SourcePool:
    """Open source files on demand, a few at a time (a run may have thousands of segments)."""

    def __init__(self, paths: Sequence[Path], max_open: int = 16) -> None:
        self.paths = list(paths)
        self.max_open = max_open
        self._open: OrderedDict[int, Any] = OrderedDict()

    def get(self, i: int) -> h5py.File:
        f = self._open.get(i)
        if f is None:
            if len(self._open) >= self.max_open:
                _, old = self._open.popitem(last=False)
                old.close()
            f = self._open[i] = h5py_module().File(self.paths[i], "r")
        else:
            self._open.move_to_end(i)
        return f

    def close(self) -> None:
        for f in self._open.values():
            with contextlib.suppress(Exception):
                f.close()
        self._open.clear()


@dataclass
class _Target:
    """One output dataset and where its rows come from: ``name`` in every source, rows along ``axis``."""

    name: str
    dataset: Any
    axis: int  # 0 for [N, D]; 1 for views [K, N, D]


def assemble(
    out: Path,
    plan: AssemblyPlan,
    meta: dict[str, Any],
    *,
    layers: Sequence[str],
    n_views: int,
    store_dtype: str,
    progress: ProgressCallback | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Write a complete cache at ``out`` (a temporary path the caller publishes), block by block.

    Memory stays flat in N: each step holds ``COPY_ROWS`` rows. Checksums of every dataset are computed on the way
    and stored in the metadata, for ``tlkit cache verify``. Returns the metadata written.
    """
    import numpy as np

    n = len(plan.ids)
    started = time.perf_counter() if started is None else started
    pool = _SourcePool(plan.sources)
    try:
        dims = _source_dims(pool, plan, layers)
        dtype = np.dtype(store_dtype)
        width = dims["features"] * (1 + n_views) + sum(v for k, v in dims.items() if k != "features")
        meta_bytes = 4 * len(dumps(meta)) + 64 * (len(layers) + n_views + 8)
        size = estimate_bytes(n, width, dtype.itemsize, [plan.ids, plan.stamps], meta_bytes)
        with h5py_module().File(out, "w", libver=LIBVER) as f:
            reserve(out, size)
            targets = _create_datasets(f, n, dims, dtype, layers, n_views)
            f.create_dataset("labels", data=np.asarray(plan.labels, np.int64))
            checksums = _copy_rows(f, pool, plan, targets, dtype, progress, started)
            meta = {**meta, "n_items": n, "dim": dims["features"], "checksums": checksums}
            meta["complete"] = True  # the completion marker, written last
            f.attrs[META_ATTR] = dumps(meta)
    except OSError as exc:
        with contextlib.suppress(OSError):
            out.unlink()
        raise write_error(out, exc, kept="finished rows are kept; nothing was lost") from exc
    finally:
        pool.close()
    return meta


def _create_datasets(
    f: h5py.File, n: int, dims: dict[str, int], dtype: Any, layers: Sequence[str], n_views: int
) -> list[_Target]:
    """The chunked output datasets that are copied from the sources, plus empty ``ids`` and ``stamps``."""
    d = dims["features"]
    targets = [_Target("features", f.create_dataset("features", (n, d), dtype, chunks=_chunks(n, d, dtype)), 0)]
    for column in ("ids", "stamps"):
        f.create_dataset(column, shape=(n,), dtype=str_dtype(), chunks=(min(max(n, 1), 16384),))
    if layers:
        g = f.create_group("layers")
        for name in layers:
            key, width = f"layers/{layer_key(name)}", dims[f"layers/{layer_key(name)}"]
            ds = g.create_dataset(layer_key(name), (n, width), dtype, chunks=_chunks(n, width, dtype))
            targets.append(_Target(key, ds, 0))
    if n_views:
        views = f.create_dataset("views", (n_views, n, d), dtype, chunks=(1, *_chunks(n, d, dtype)))
        targets.append(_Target("views", views, 1))
    return targets


def _copy_rows(
    f: h5py.File,
    pool: _SourcePool,
    plan: AssemblyPlan,
    targets: Sequence[_Target],
    dtype: Any,
    progress: ProgressCallback | None,
    started: float,
) -> dict[str, str]:
    """Copy every row block by block, hashing as it goes; returns the SHA-256 of each dataset."""
    import numpy as np

    n = len(plan.ids)
    hashers: dict[str, Any] = {}
    for t in targets:
        for name in [f"views/{k}" for k in range(t.dataset.shape[0])] if t.name == "views" else [t.name]:
            hashers[name] = hashlib.sha256()
    hashers["ids"] = hashlib.sha256()
    hashers["labels"] = hashlib.sha256(np.ascontiguousarray(plan.labels, dtype="<i8").tobytes())
    for a in range(0, n, COPY_ROWS):
        b = min(a + COPY_ROWS, n)
        src, rows = plan.src[a:b], plan.rows[a:b]
        for t in targets:
            ds = t.dataset
            block = np.empty((b - a, ds.shape[1]) if t.axis == 0 else (ds.shape[0], b - a, ds.shape[2]), dtype)
            _gather(pool, t.name, src, rows, block, t.axis)
            if t.axis == 0:
                ds[a:b] = block
                hashers[t.name].update(le_bytes(block))
            else:
                ds[:, a:b] = block
                for k in range(block.shape[0]):
                    hashers[f"views/{k}"].update(le_bytes(block[k]))
        ids_block = as_str_array(plan.ids[a:b])
        f["ids"][a:b] = ids_block
        f["stamps"][a:b] = as_str_array(plan.stamps[a:b])
        hashers["ids"].update(b"".join(i + b"\n" for i in ids_block))
        emit(progress, ProgressEvent("assemble", b, n, elapsed=time.perf_counter() - started))
    return {k: h.hexdigest() for k, h in hashers.items()}


def _gather(pool: _SourcePool, name: str, src: np.ndarray, rows: np.ndarray, out: np.ndarray, axis: int) -> None:
    """Fill ``out`` (block rows along ``axis``) with ``dataset[name]`` rows ``rows`` of sources ``src``."""
    import numpy as np

    for s in np.unique(src):
        where = np.nonzero(src == s)[0]
        r = rows[where]
        ds = pool.get(int(s))[name]
        lo, hi = int(r.min()), int(r.max()) + 1
        if hi - lo == len(r) and (len(r) == 1 or bool((np.diff(r) == 1).all())):
            block = ds[lo:hi] if axis == 0 else ds[:, lo:hi]
        else:
            order = np.argsort(r)
            sorted_rows = r[order]
            data = ds[sorted_rows] if axis == 0 else ds[:, sorted_rows]
            block = np.empty_like(data)
            if axis == 0:
                block[order] = data
            else:
                block[:, order] = data
        if axis == 0:
            out[where] = block
        else:
            out[:, where] = block


def _chunks(n: int, d: int, dtype: Any) -> tuple[int, int]:
    return (chunk_rows(d * dtype.itemsize, max(n, 1)), max(d, 1))


def _source_dims(pool: _SourcePool, plan: AssemblyPlan, layers: Sequence[str]) -> dict[str, int]:
    """Widths of features and each layer, read from the first source that has rows."""
    import numpy as np

    used = np.unique(plan.src) if len(plan.src) else np.array([], np.int64)
    if not len(used):
        raise CacheError("no rows to write")
    f = pool.get(int(used[0]))
    dims = {"features": int(f["features"].shape[1])}
    for name in layers:
        key = f"layers/{layer_key(name)}"
        if key not in f:
            raise CacheError(f"{plan.sources[int(used[0])]}: layer {name!r} missing")
        dims[key] = int(f[key].shape[1])
    return dims
