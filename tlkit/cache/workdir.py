"""The work folder of an unfinished extraction: ``CACHE.h5.work/`` with ``plan.json`` and segment files.

Crash safety rests on one rule: **the cache path only ever holds a complete file.** While an extraction runs,
finished rows go into the work folder as small segment files, each written to a temporary name, flushed to disk and
renamed into place. A ``kill -9`` at any moment therefore leaves whole segments plus at most one stray temporary
file. When every row is done, the segments (and the rows of an older cache that are still valid) are assembled
into one new file (:mod:`tlkit.cache.assemble`), which is renamed over the cache path in a single atomic step.
A lock file (``CACHE.h5.lock``) keeps a second writer out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.format import (
    LIBVER,
    PLAN_FILE,
    SEGMENT_ATTR,
    WORK_SUFFIX,
    dumps,
    layer_key,
    read_packed,
    work_dir_for,
)
from tlkit.cache.storage import (
    as_str_array,
    estimate_bytes,
    h5py_module,
    live_writer,
    reserve,
    str_dtype,
    write_error,
)
from tlkit.errors import CacheError
from tlkit.fileio import atomic_write, atomic_write_with

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Segment:
    """One committed window of rows, as found on disk."""

    path: Path
    seq: int
    rows: int
    ids: Sequence[str]  # PackedStrings: one buffer, no string object per row
    stamps: Sequence[str]
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

    def width(self) -> int:
        """Numbers per row over features, layers and views."""
        width = int(self.features.shape[1]) if self.features.ndim == 2 else 0
        width += sum(int(a.shape[1]) for a in self.layers.values())
        return width + (int(self.views.shape[0] * self.views.shape[2]) if self.views is not None else 0)


class WorkDir:
    """``CACHE.h5.work/``: ``plan.json`` plus ``seg-NNNNNN.h5`` files, each complete or absent."""

    def __init__(self, cache_path: str | os.PathLike[str]) -> None:
        self.cache_path = Path(cache_path)
        self.path = work_dir_for(self.cache_path)

    def exists(self) -> bool:
        return self.path.is_dir()

    def read_plan(self) -> dict[str, Any] | None:
        try:
            plan = json.loads((self.path / PLAN_FILE).read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return plan if isinstance(plan, dict) else None

    def start(self, plan: Mapping[str, Any]) -> None:
        """Create the folder and write the plan atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_write(self.path / PLAN_FILE, "w") as fh:
                fh.write(dumps(dict(plan)))
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

    @contextlib.contextmanager
    def removed_if_empty_on_error(self, enabled: bool = True) -> Iterator[None]:
        """Remove the folder when the ``with`` block fails before any segment was committed: a run that fails at
        start (a backbone that cannot be built, the first item refused) leaves nothing to resume, and a stale
        plan would refuse the corrected command."""
        try:
            yield
        except BaseException:
            if enabled and not any(self.path.glob("seg-*.h5")):
                self.remove()
            raise

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
        with h5py_module().File(p, "r") as f:
            info = json.loads(f.attrs[SEGMENT_ATTR])
            ids = read_packed(f["ids"])
            stamps = read_packed(f["stamps"])
            if len(ids) != info["rows"] or f["features"].shape[0] != info["rows"] or len(stamps) != len(ids):
                raise CacheError(f"{p}: row counts disagree")
        return Segment(p, int(p.stem.split("-")[1]), int(info["rows"]), ids, stamps, info["skipped"], info["flags"],
                       int(info["window"]))  # fmt: skip

    def write_segment(self, seq: int, data: SegmentData) -> Path:
        """Write one window atomically: temporary name, fsync, rename."""
        final = self.path / f"seg-{seq:06d}.h5"
        try:
            atomic_write_with(final, lambda tmp: _write_segment_file(Path(tmp), data))
        except OSError as exc:
            raise write_error(self.cache_path, exc, kept=f"finished rows are kept in {self.path.name}/") from exc
        return final


def _write_segment_file(path: Path, data: SegmentData) -> None:
    n = len(data.ids)
    extra = 8 * len(dumps(data.skipped))
    size = estimate_bytes(n, data.width(), data.features.dtype.itemsize, [data.ids, data.stamps], extra)
    with h5py_module().File(path, "w", libver=LIBVER) as f:
        reserve(path, size)
        f.attrs[SEGMENT_ATTR] = dumps({"window": data.window, "rows": n, "skipped": data.skipped, "flags": data.flags})
        f.create_dataset("ids", data=as_str_array(data.ids), dtype=str_dtype())
        f.create_dataset("stamps", data=as_str_array(data.stamps), dtype=str_dtype())
        f.create_dataset("features", data=data.features)
        if data.layers:
            g = f.create_group("layers")
            for name, arr in data.layers.items():
                g.create_dataset(layer_key(name), data=arr)
        if data.views is not None:
            f.create_dataset("views", data=data.views)


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


def unfinished_cache(path: str | os.PathLike[str]) -> str | None:
    """Why a cache path holds no complete file yet, in one line with the fix, or ``None`` when nothing is under way:
    a live writer (named by pid and host: wait for it), or an interrupted extraction (rerun it to resume)."""
    path = Path(path)
    work = work_dir_for(path)
    writer = live_writer(path)
    if writer is not None:
        done = f"; {describe_work(work)}" if work.exists() else ""
        return f"{path} is still being written by a live tlkit process ({writer}{done}); wait for it to finish"
    if work.exists():
        return (
            f"{path} is incomplete: an extraction into it was interrupted ({describe_work(work)}); rerun the same "
            f"tlkit extract command to resume"
        )
    return None
