"""The HDF5 feature cache: its public format, the reader, crash-safe writing, verification, export and merge.

The format is documented in ``docs/cache-format.md``; third parties read it with plain h5py.

Crash safety rests on one rule: **the cache path only ever holds a complete file.** While an extraction runs,
finished rows go into a work folder next to the cache (``CACHE.h5.work/``) as small segment files, each written to
a temporary name, flushed to disk and renamed into place. A ``kill -9`` at any moment therefore leaves whole
segments plus at most one stray temporary file. When every row is done, the segments (and the rows of an older
cache that are still valid) are copied, block by block, into one new file inside the work folder, which is then
renamed over the cache path in a single atomic step. A lock file (``CACHE.h5.lock``) keeps a second writer out.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import CacheError, FingerprintMismatchError, UnknownNameError
from tlkit.runtime.progress import ProgressCallback, ProgressEvent, emit

if TYPE_CHECKING:
    import h5py
    import numpy as np

FORMAT_NAME = "tlkit-features"
FORMAT_VERSION = 1
META_ATTR = "tlkit"
SEGMENT_ATTR = "tlkit-segment"
WORK_SUFFIX = ".work"
LOCK_SUFFIX = ".lock"
PLAN_FILE = "plan.json"
#: HDF5 1.8 object formats: readable by every h5py/HDF5 of the last 15 years, and large attributes still work.
LIBVER = ("v108", "v108")
STORE_DTYPES = ("float32", "float16")
#: Target size of one HDF5 chunk; rows per chunk follow from the row width.
CHUNK_BYTES = 1 << 20
#: Rows copied per step while assembling, exporting or verifying: bounds memory whatever N is.
COPY_ROWS = 8192


# ---------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------
def work_dir_for(path: str | os.PathLike[str]) -> Path:
    """The work folder that holds an unfinished extraction into ``path``."""
    path = Path(path)
    return path.with_name(path.name + WORK_SUFFIX)


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def layer_key(name: str) -> str:
    """The dataset name under ``layers/`` for a block name (``/`` would make a subgroup, so it is escaped)."""
    return name.replace("%", "%25").replace("/", "%2F")


def chunk_rows(row_bytes: int, n_rows: int) -> int:
    return max(1, min(n_rows, max(64, CHUNK_BYTES // max(row_bytes, 1)), 65536))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=_json_default)


def _h5py() -> Any:
    import h5py

    return h5py


def _str_dtype() -> Any:
    return _h5py().string_dtype("utf-8")


def write_error(path: Path, exc: BaseException, kept: str = "") -> CacheError:
    """A one-line error for a failed write: disk full and file-size limits get the fix spelled out."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
        s in text for s in ("No space left", "File too large", "Disk quota", "errno = 28", "errno = 27")
    ):
        why = "the disk is full or a file-size limit was reached"
    else:
        why = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
    msg = f"{path}: write failed ({why}); free space or raise the limit, then rerun the same command to resume"
    if kept:
        msg += f" ({kept})"
    return CacheError(msg)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk; folders need it so that a rename survives a power cut."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def reserve(path: Path, nbytes: int) -> None:
    """Claim ``nbytes`` of disk for a file h5py has just created, before HDF5 writes into it.

    HDF5 handles a failed write badly (errors while closing, even a crash), so a full disk or a file-size limit
    must surface here, as a plain ``OSError`` (ENOSPC or EFBIG), and never inside HDF5. HDF5 trims the file to
    its real size when it closes it.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.ftruncate(fd, max(nbytes, os.fstat(fd).st_size))  # no fallocate here: still checks size limits
    finally:
        os.close(fd)


def estimate_bytes(n: int, width: int, itemsize: int, strings: Sequence[Sequence[str]], extra: int = 0) -> int:
    """A generous size for a file of ``n`` rows: numeric data, variable-length strings (about 48 bytes of heap
    overhead each), chunk indexes and metadata."""
    text = sum(48 + len(s.encode("utf-8")) for column in strings for s in column)
    data = n * width * itemsize + 8 * n
    return int((data + text) * 1.05) + extra + (64 << 10)


def publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished file into place: after this, ``final`` is either the old file or the new one."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


def read_meta_attr(f: h5py.File, path: Path) -> dict[str, Any]:
    raw = f.attrs.get(META_ATTR)
    if raw is None:
        raise CacheError(f"{path}: not a tlkit feature cache (no '{META_ATTR}' attribute); pass a file made by tlkit")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: the '{META_ATTR}' metadata is not valid JSON ({exc}); the file is damaged") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CacheError(
            f"{path}: not a tlkit feature cache (format {meta.get('format')!r}); pass a file made by tlkit"
        )
    return meta


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    h5py = _h5py()
    try:
        return h5py.File(path, mode, libver=LIBVER) if mode != "r" else h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        if mode == "r":
            raise CacheError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from exc
        raise write_error(path, exc) from exc


# ---------------------------------------------------------------------------------------------------------------
# keys: what must match before rows from two runs may share one cache
# ---------------------------------------------------------------------------------------------------------------
KEY_FIELDS = {
    "backbone": "backbone fingerprint",
    "precision": "precision",
    "store_dtype": "store dtype",
    "layers": "layers",
    "views": "views",
    "augment": "view augmentation",
    "view_seed": "view seed",
    "reader": "reader",
    "reader_options": "reader options",
}


def key_mismatch(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two run keys (empty when rows may be mixed)."""
    out = []
    for k, label in KEY_FIELDS.items():
        a, b = have.get(k), want.get(k)
        if dumps(a) != dumps(b):
            out.append(f"{label} {_short(a)} vs {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------------------------
# the lock
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cache_lock(path: str | os.PathLike[str], timeout: float = 0) -> Iterator[None]:
    """Hold ``CACHE.h5.lock`` for the duration; a second writer gets a clear :class:`CacheError`.

    The lock is an OS file lock (``flock``), so the kernel drops it when the holder dies, even by ``kill -9``.
    """
    from filelock import FileLock, Timeout

    lock_file = lock_path_for(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise CacheError(
            f"{path} is being written by another tlkit process (lock {lock_file.name} is held); wait for it to "
            f"finish, or write to another -o path"
        ) from None
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------
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
            work = work_dir_for(self.path)
            if work.exists():
                raise CacheError(
                    f"{self.path} is incomplete: an extraction into it was interrupted ({describe_work(work)}); "
                    f"rerun the same tlkit extract command to resume"
                )
            raise CacheError(f"{self.path}: no such cache; create it with tlkit extract")
        self._file = open_h5(self.path, "r")
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
            self._labels = self._file["labels"][()]
        return self._labels

    @property
    def ids(self) -> list[str]:
        """``[N]`` stable item ids (relative paths, ``file.csv:line``)."""
        if self._ids is None:
            self._ids = list(self._file["ids"].asstr()[()])
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
        from tlkit.host.api import get_backbone

        info = self.backbone
        kwargs = dict(info.get("init_kwargs") or {})
        kwargs.setdefault("weights", info.get("weights", "pretrained"))
        return get_backbone(info["name"], **kwargs)

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
    ) -> Iterator[tuple[np.ndarray, ...]]:
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
        return self._views[self._k, rows]


def load_features(
    path: str | os.PathLike[str], layer: str | None = None, view: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` numpy arrays from a cache: ``X`` float32 ``[N, D]``, ``y`` int64 ``[N]`` (-1 when unlabelled).

    ``layer`` picks a cached intermediate block, ``view`` one of the augmented views.
    """
    with FeatureCache(path) as fc:
        return fc.to_numpy(layer=layer, view=view)


# ---------------------------------------------------------------------------------------------------------------
# the work folder: plan + segments of an unfinished extraction
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One committed window of rows, as found on disk."""

    path: Path
    seq: int
    rows: int
    ids: list[str]
    stamps: list[str]
    skipped: list[dict[str, str]]
    flags: dict[str, int]
    window: int


@dataclass
class SegmentData:
    """The rows of one finished window, in dataset order, ready to write."""

    window: int
    ids: list[str]
    stamps: list[str]
    features: np.ndarray
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    views: np.ndarray | None = None  # [K, n, D]
    skipped: list[dict[str, str]] = field(default_factory=list)
    flags: dict[str, int] = field(default_factory=dict)


class WorkDir:
    """``CACHE.h5.work/``: ``plan.json`` plus ``seg-NNNNNN.h5`` files, each complete or absent."""

    def __init__(self, cache_path: str | os.PathLike[str]) -> None:
        self.cache_path = Path(cache_path)
        self.path = work_dir_for(self.cache_path)

    def exists(self) -> bool:
        return self.path.is_dir()

    def read_plan(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / PLAN_FILE).read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def start(self, plan: Mapping[str, Any]) -> None:
        """Create the folder and write the plan atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / (PLAN_FILE + ".tmp")
        try:
            tmp.write_text(dumps(dict(plan)), "utf-8")
            publish(tmp, self.path / PLAN_FILE)
        except OSError as exc:
            raise write_error(self.path / PLAN_FILE, exc) from exc

    def clear_temporaries(self) -> None:
        """Remove half-written files a crash left behind (a finished file never has a ``.tmp`` name)."""
        if self.exists():
            for p in self.path.iterdir():
                if p.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        p.unlink()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def segments(self, *, delete_bad: bool = True) -> list[Segment]:
        """Committed segments in order. Unreadable ones are deleted (their rows will be recomputed) when
        ``delete_bad``; read-only callers pass ``False``."""
        if not self.exists():
            return []
        out = []
        for p in sorted(self.path.glob("seg-*.h5")):
            try:
                out.append(self._read_segment(p))
            except Exception:  # noqa: BLE001 - a damaged segment is recomputed, never trusted
                if delete_bad:
                    with contextlib.suppress(OSError):
                        p.unlink()
        return out

    @staticmethod
    def _read_segment(p: Path) -> Segment:
        with _h5py().File(p, "r") as f:
            info = json.loads(f.attrs[SEGMENT_ATTR])
            ids = list(f["ids"].asstr()[()])
            stamps = list(f["stamps"].asstr()[()])
            if len(ids) != info["rows"] or f["features"].shape[0] != info["rows"] or len(stamps) != len(ids):
                raise CacheError(f"{p}: row counts disagree")
        return Segment(p, int(p.stem.split("-")[1]), int(info["rows"]), ids, stamps, info["skipped"], info["flags"],
                       int(info["window"]))  # fmt: skip

    def write_segment(self, seq: int, data: SegmentData) -> Path:
        """Write one window atomically: temporary name, fsync, rename."""
        final = self.path / f"seg-{seq:06d}.h5"
        tmp = final.with_name(final.name + ".tmp")
        n = len(data.ids)
        width = int(data.features.shape[1]) if data.features.ndim == 2 else 0
        width += sum(int(a.shape[1]) for a in data.layers.values())
        width += int(data.views.shape[0] * data.views.shape[2]) if data.views is not None else 0
        size = estimate_bytes(
            n, width, data.features.dtype.itemsize, [data.ids, data.stamps], 8 * len(dumps(data.skipped))
        )
        try:
            with _h5py().File(tmp, "w", libver=LIBVER) as f:
                reserve(tmp, size)
                f.attrs[SEGMENT_ATTR] = dumps(
                    {"window": data.window, "rows": n, "skipped": data.skipped, "flags": data.flags}
                )
                f.create_dataset("ids", data=_as_str_array(data.ids), dtype=_str_dtype())
                f.create_dataset("stamps", data=_as_str_array(data.stamps), dtype=_str_dtype())
                f.create_dataset("features", data=data.features)
                if data.layers:
                    g = f.create_group("layers")
                    for name, arr in data.layers.items():
                        g.create_dataset(layer_key(name), data=arr)
                if data.views is not None:
                    f.create_dataset("views", data=data.views)
            publish(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise write_error(self.cache_path, exc, kept=f"finished rows are kept in {self.path.name}/") from exc
        return final


def _as_str_array(items: Sequence[str]) -> np.ndarray:
    import numpy as np

    return np.array(list(items), dtype=object)


def describe_work(work: Path) -> str:
    """A short, read-only description of an unfinished run (it may be finishing while we look)."""
    wd = WorkDir(work.with_name(work.name[: -len(WORK_SUFFIX)]))
    try:
        segs = wd.segments(delete_bad=False) if wd.exists() else []
    except OSError:
        segs = []
    plan = wd.read_plan() or {}
    rows = sum(s.rows + len(s.skipped) for s in segs)
    total = plan.get("todo")
    of = f" of {total}" if total is not None else ""
    return f"{rows}{of} new items committed in {work.name}/"


# ---------------------------------------------------------------------------------------------------------------
# assembling rows from several files into one cache
# ---------------------------------------------------------------------------------------------------------------
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
            f = self._open[i] = _h5py().File(self.paths[i], "r")
        else:
            self._open.move_to_end(i)
        return f

    def close(self) -> None:
        for f in self._open.values():
            with contextlib.suppress(Exception):
                f.close()
        self._open.clear()


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


@dataclass
class AssemblyPlan:
    """Which source file and row every output row comes from, plus the per-row data that is not copied."""

    sources: list[Path]
    src: np.ndarray  # [N] index into sources
    rows: np.ndarray  # [N] row in that source
    ids: list[str]
    labels: np.ndarray
    stamps: list[str]


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
        hashers: dict[str, Any] = {}
        width = dims["features"] * (1 + n_views) + sum(v for k, v in dims.items() if k != "features")
        meta_bytes = 4 * len(dumps(meta)) + 64 * (len(layers) + n_views + 8)
        size = estimate_bytes(n, width, dtype.itemsize, [plan.ids, plan.stamps], meta_bytes)
        with _h5py().File(out, "w", libver=LIBVER) as f:
            reserve(out, size)
            targets: list[tuple[str, Any, int]] = []  # (source dataset name, output dataset, axis)
            feat = f.create_dataset(
                "features", shape=(n, dims["features"]), dtype=dtype, chunks=_chunks(n, dims["features"], dtype)
            )
            targets.append(("features", feat, 0))
            f.create_dataset("labels", data=np.asarray(plan.labels, np.int64))
            ids_ds = f.create_dataset("ids", shape=(n,), dtype=_str_dtype(), chunks=(min(max(n, 1), 16384),))
            stamps_ds = f.create_dataset("stamps", shape=(n,), dtype=_str_dtype(), chunks=(min(max(n, 1), 16384),))
            if layers:
                g = f.create_group("layers")
                for name in layers:
                    key = f"layers/{layer_key(name)}"
                    ds = g.create_dataset(
                        layer_key(name), shape=(n, dims[key]), dtype=dtype, chunks=_chunks(n, dims[key], dtype)
                    )
                    targets.append((key, ds, 0))
            if n_views:
                d = dims["features"]
                views = f.create_dataset("views", shape=(n_views, n, d), dtype=dtype, chunks=(1, *_chunks(n, d, dtype)))
                targets.append(("views", views, 1))
            for name, _, _ in targets:
                if name == "views":
                    for k in range(n_views):
                        hashers[f"views/{k}"] = hashlib.sha256()
                else:
                    hashers[name] = hashlib.sha256()
            hashers["ids"] = hashlib.sha256()
            hashers["labels"] = hashlib.sha256(np.ascontiguousarray(plan.labels, dtype="<i8").tobytes())
            for a in range(0, n, COPY_ROWS):
                b = min(a + COPY_ROWS, n)
                src, rows = plan.src[a:b], plan.rows[a:b]
                for name, ds, axis in targets:
                    shape = (b - a, ds.shape[1]) if axis == 0 else (ds.shape[0], b - a, ds.shape[2])
                    block = np.empty(shape, dtype)
                    _gather(pool, name, src, rows, block, axis)
                    if axis == 0:
                        ds[a:b] = block
                        hashers[name].update(_le_bytes(block))
                    else:
                        ds[:, a:b] = block
                        for k in range(block.shape[0]):
                            hashers[f"views/{k}"].update(_le_bytes(block[k]))
                ids_block = plan.ids[a:b]
                ids_ds[a:b] = _as_str_array(ids_block)
                stamps_ds[a:b] = _as_str_array(plan.stamps[a:b])
                for i in ids_block:
                    hashers["ids"].update(i.encode("utf-8") + b"\n")
                emit(progress, ProgressEvent("assemble", b, n, elapsed=time.perf_counter() - started))
            meta = {
                **meta,
                "n_items": n,
                "dim": dims["features"],
                "checksums": {k: h.hexdigest() for k, h in hashers.items()},
            }
            meta["complete"] = True  # the completion marker, written last
            f.attrs[META_ATTR] = dumps(meta)
    except OSError as exc:
        with contextlib.suppress(OSError):
            out.unlink()
        raise write_error(out, exc, kept="finished rows are kept; nothing was lost") from exc
    finally:
        pool.close()
    return meta


def _le_bytes(a: np.ndarray) -> bytes:
    import numpy as np

    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()


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


# ---------------------------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    path: Path
    status: str  # "ok" | "incomplete" | "corrupt" | "missing"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    items: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "status": self.status, "ok": self.ok, "items": self.items,
                "problems": self.problems, "warnings": self.warnings}  # fmt: skip


def verify_cache(path: str | os.PathLike[str], *, checksums: bool = True) -> VerifyReport:
    """Check a cache end to end: completion marker, shapes, ids, labels, checksums, non-finite values."""
    import numpy as np

    path = Path(path)
    work = work_dir_for(path)
    if not path.exists():
        if work.exists():
            return VerifyReport(path, "incomplete", [f"extraction interrupted: {describe_work(work)}; rerun the same "
                                                     f"tlkit extract command to resume"])  # fmt: skip
        return VerifyReport(path, "missing", [f"{path}: no such file"])
    rep = VerifyReport(path, "ok")
    try:
        f = _h5py().File(path, "r")
    except OSError as exc:
        return VerifyReport(path, "corrupt", [f"not a readable HDF5 file ({str(exc).splitlines()[0]})"])
    with f:
        try:
            meta = read_meta_attr(f, path)
        except CacheError as exc:
            return VerifyReport(path, "corrupt", [str(exc)])
        if not meta.get("complete"):
            rep.status = "incomplete"
            rep.problems.append("no completion marker: the file was not finished; rerun tlkit extract")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            rep.problems.append(f"format version {meta.get('format_version')} is newer than this tlkit reads")
        missing = [d for d in ("features", "labels", "ids") if d not in f]
        if missing:
            rep.status = "corrupt"
            rep.problems.append(f"missing dataset(s): {', '.join(missing)}")
            return rep
        n = int(f["features"].shape[0])
        rep.items = n
        expect = {"labels": (n,), "ids": (n,)}
        if "stamps" in f:
            expect["stamps"] = (n,)
        for name in meta.get("layers", []):
            key = f"layers/{layer_key(name)}"
            if key not in f:
                rep.problems.append(f"layer {name!r} listed in metadata but {key} is missing")
            elif f[key].shape[0] != n:
                rep.problems.append(f"{key} has {f[key].shape[0]} rows, features has {n}")
        if meta.get("views"):
            if "views" not in f:
                rep.problems.append("metadata lists views but the 'views' dataset is missing")
            elif tuple(f["views"].shape) != (meta["views"], n, f["features"].shape[1]):
                rep.problems.append(f"views has shape {tuple(f['views'].shape)}, expected ({meta['views']}, {n}, D)")
        for name, shape in expect.items():
            if tuple(f[name].shape) != shape:
                rep.problems.append(f"{name} has shape {tuple(f[name].shape)}, expected {shape}")
        if meta.get("n_items") is not None and meta["n_items"] != n:
            rep.problems.append(f"metadata says {meta['n_items']} items, features has {n}")
        if not rep.problems:
            ids = list(f["ids"].asstr()[()])
            if len(set(ids)) != len(ids):
                rep.problems.append(f"{len(ids) - len(set(ids))} duplicate id(s)")
            labels = f["labels"][()]
            k = len(meta.get("class_names", []))
            bad = int(((labels < -1) | (labels >= max(k, 0))).sum()) if len(labels) else 0
            if bad:
                rep.problems.append(f"{bad} label(s) outside -1..{k - 1}")
            nonfinite = 0
            sums = meta.get("checksums", {}) if checksums else {}
            hashers = {name: hashlib.sha256() for name in sums}
            datasets = ["features", *(f"layers/{layer_key(x)}" for x in meta.get("layers", []))]
            for a in range(0, n, COPY_ROWS):
                for name in datasets:
                    block = f[name][a : a + COPY_ROWS]
                    nonfinite += int((~np.isfinite(block)).any(axis=1).sum()) if name == "features" else 0
                    if name in hashers:
                        hashers[name].update(_le_bytes(block))
                for kk in range(int(meta.get("views") or 0)):
                    if f"views/{kk}" in hashers:
                        hashers[f"views/{kk}"].update(_le_bytes(f["views"][kk, a : a + COPY_ROWS]))
            if "ids" in hashers:
                for i in ids:
                    hashers["ids"].update(i.encode("utf-8") + b"\n")
            if "labels" in hashers:
                hashers["labels"].update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
            for name, h in hashers.items():
                if h.hexdigest() != sums[name]:
                    rep.problems.append(f"checksum mismatch in {name}: the data changed after it was written")
            if nonfinite:
                rep.warnings.append(f"{nonfinite} row(s) of features contain NaN or inf")
        if rep.problems and rep.status == "ok":
            rep.status = "corrupt"
    if work.exists():
        rep.warnings.append(f"an interrupted update is pending ({describe_work(work)}); rerun tlkit extract to "
                            f"finish it")  # fmt: skip
    return rep


# ---------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------
EXPORT_FORMATS = ("npz", "csv")


def export_cache(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str = "npz",
    *,
    layer: str | None = None,
    view: int | None = None,
) -> Path:
    """Write the features to ``out``: ``npz`` (arrays ``X``, ``y``, ``ids``, ``class_names``; loads with
    ``numpy.load`` without pickle) or ``csv`` (``id,label,class,f0..f{D-1}``). Streams, so memory stays flat."""
    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise CacheError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    with FeatureCache(path) as fc:
        src = fc.source(layer, view)
        tmp = out.with_name(out.name + ".tmp")
        try:
            if fmt == "npz":
                _export_npz(fc, src, tmp)
            else:
                _export_csv(fc, src, tmp)
            os.replace(tmp, out)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise write_error(out, exc) from exc
    return out


def _export_npz(fc: FeatureCache, src: Any, out: Path) -> None:
    import numpy as np

    n, d = len(fc), int(src.shape[-1])
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("X.npy", "w", force_zip64=True) as fp:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (n, d)}
            np.lib.format.write_array_header_2_0(fp, header)
            for a in range(0, n, COPY_ROWS):
                fp.write(np.ascontiguousarray(src[a : a + COPY_ROWS], dtype="<f4").tobytes())
        for name, arr in (
            ("y", np.asarray(fc.labels, "<i8")),
            ("ids", np.array(fc.ids, dtype=str) if n else np.array([], dtype="<U1")),
            ("class_names", np.array(fc.class_names, dtype=str) if fc.class_names else np.array([], dtype="<U1")),
        ):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array(fp, arr, allow_pickle=False)


def _export_csv(fc: FeatureCache, src: Any, out: Path) -> None:
    import csv

    n, d = len(fc), int(src.shape[-1])
    names = fc.class_names
    labels = fc.labels
    ids = fc.ids
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "class", *(f"f{i}" for i in range(d))])
        for a in range(0, n, COPY_ROWS):
            block = src[a : a + COPY_ROWS]
            for i, row in enumerate(block):
                lab = int(labels[a + i])
                w.writerow(
                    [ids[a + i], lab, names[lab] if 0 <= lab < len(names) else "", *(repr(float(v)) for v in row)]
                )


# ---------------------------------------------------------------------------------------------------------------
# merge: shards (or any disjoint caches with the same key) into one cache
# ---------------------------------------------------------------------------------------------------------------
def merge_caches(
    parts: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Merge part caches into one. Parts made with ``--shard I/N`` are put in shard order after checking that the
    shards are complete, disjoint and from the same backbone, settings and dataset; other parts are concatenated in
    the order given, after the same key and disjointness checks."""
    import numpy as np

    output = Path(output)
    if not parts:
        raise CacheError("no part caches given to merge")
    metas, idss, labels, stamps = [], [], [], []
    for p in parts:
        with FeatureCache(p) as fc:
            metas.append(fc.meta)
            idss.append(fc.ids)
            labels.append(np.asarray(fc.labels))
            stamps.append(list(fc.file["stamps"].asstr()[()]) if "stamps" in fc.file else [""] * len(fc))
    paths = [Path(p) for p in parts]
    first = metas[0]
    for p, m in zip(paths[1:], metas[1:], strict=True):
        diff = key_mismatch(first.get("key", {}), m.get("key", {}))
        if diff:
            raise FingerprintMismatchError(f"{p} was not made like {paths[0]} ({'; '.join(diff)}); merge only parts "
                                           f"of one extraction")  # fmt: skip
        if m.get("class_names") != first.get("class_names"):
            raise FingerprintMismatchError(
                f"{p} has other class names than {paths[0]}; merge only parts of one dataset"
            )
    shards = [m.get("shard") for m in metas]
    order = list(range(len(paths)))
    if any(s is not None for s in shards):
        if any(s is None for s in shards):
            raise CacheError("some parts are shards (--shard I/N) and some are not; merge shards of one run only")
        counts = {s["count"] for s in shards}
        fps = {m.get("dataset", {}).get("fingerprint") for m in metas}
        if len(counts) != 1 or len(fps) != 1:
            raise FingerprintMismatchError("the shards come from different datasets or shard counts; rerun them with "
                                           "the same input and --shard I/N")  # fmt: skip
        count = counts.pop()
        seen: dict[int, Path] = {}
        for p, s in zip(paths, shards, strict=True):
            if s["index"] in seen:
                raise CacheError(f"shard {s['index']}/{count} is given twice ({seen[s['index']]} and {p})")
            seen[s["index"]] = p
        absent = [str(i) for i in range(count) if i not in seen]
        if absent:
            raise CacheError(f"missing shard(s) {', '.join(absent)} of {count}; run them with --shard I/{count} first")
        order = sorted(order, key=lambda i: shards[i]["index"])
        _check_shards_cover(paths, metas, shards, idss)
    all_ids: set[str] = set()
    for i in order:
        dup = all_ids.intersection(idss[i])
        if dup:
            raise CacheError(f"{paths[i]} overlaps another part ({len(dup)} shared id(s), e.g. {sorted(dup)[0]!r}); "
                             f"parts must be disjoint")  # fmt: skip
        all_ids.update(idss[i])
    if output.exists() and not overwrite:
        raise CacheError(f"{output} exists; pass --overwrite to replace it")
    plan = AssemblyPlan(
        sources=[paths[i] for i in order],
        src=np.concatenate([np.full(len(idss[i]), j, np.int32) for j, i in enumerate(order)]),
        rows=np.concatenate([np.arange(len(idss[i]), dtype=np.int64) for i in order]),
        ids=[x for i in order for x in idss[i]],
        labels=np.concatenate([labels[i] for i in order]).astype(np.int64),
        stamps=[x for i in order for x in stamps[i]],
    )
    meta = {k: v for k, v in first.items() if k not in ("checksums", "shard", "n_items", "complete")}
    meta["skipped"] = [s for i in order for s in metas[i].get("skipped", [])]
    flags: dict[str, int] = {}
    for m in metas:
        for k, v in (m.get("flags") or {}).items():
            flags[k] = flags.get(k, 0) + int(v)
    meta.update(flags=flags, run_id=uuid.uuid4().hex, created=_now(), merged_from=[str(p) for p in paths])
    with cache_lock(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".merge.tmp")
        assemble(tmp, plan, meta, layers=first.get("layers", []), n_views=int(first.get("views") or 0),
                 store_dtype=first["store_dtype"], progress=progress)  # fmt: skip
        publish(tmp, output)
    return output


def _check_shards_cover(
    paths: Sequence[Path], metas: Sequence[Mapping[str, Any]], shards: Sequence[Any], idss: Sequence[Sequence[str]]
) -> None:
    """Shards of one run cut the same windows and, together, hold every item once (as a row or as a skip)."""
    windows = {s.get("window") for s in shards}
    if len(windows) != 1:
        listing = ", ".join(f"{p.name}: {s.get('window')}" for p, s in zip(paths, shards, strict=True))
        raise CacheError(f"the shards were cut with different windows ({listing}); rerun them with the same "
                         f"--batch-size and --commit-rows")  # fmt: skip
    limits = {dumps(m.get("dataset", {}).get("limit")) for m in metas}
    if len(limits) != 1:
        raise CacheError("the shards were made with different --limit values; rerun them with the same options")
    ds = metas[0].get("dataset", {})
    if ds.get("records") is None:
        return
    limit = ds.get("limit")
    expected = min(int(ds["records"]), int(limit)) if limit is not None else int(ds["records"])
    skips = [sum(1 for s in m.get("skipped", []) if "stamp" in s) for m in metas]  # item skips; listing ones have none
    covered = sum(len(ids) for ids in idss) + sum(skips)
    if covered != expected:
        raise CacheError(f"the shards hold {covered} of the {expected} items of {ds.get('root')}; they are not "
                         f"complete, rerun every --shard I/N with the same input and options")  # fmt: skip


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
