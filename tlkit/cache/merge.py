"""``tlkit cache merge``: shards (or any disjoint caches with the same key) into one cache, copied (a self-contained
file) or virtual (HDF5 virtual datasets mapping the parts, :mod:`tlkit.cache.virtual`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.assemble import AssemblyPlan, assemble
from tlkit.cache.format import dumps, key_mismatch, read_packed, timestamp
from tlkit.cache.reader import FeatureCache
from tlkit.cache.storage import cache_lock
from tlkit.cache.virtual import VirtualPart, write_virtual
from tlkit.data.ids import id_from_bytes
from tlkit.data.records import PackedStrings
from tlkit.errors import CacheError, FingerprintMismatchError
from tlkit.fileio import atomic_write_with
from tlkit.runtime.progress import ProgressCallback

if TYPE_CHECKING:
    import numpy as np


@dataclass
class _Part:
    """One part cache: its metadata and row count; its ids, labels and stamps are read when a check or a copy
    needs them (a virtual merge of shards reads none)."""

    path: Path
    meta: dict[str, Any]
    rows: int
    _columns: tuple[PackedStrings, np.ndarray, PackedStrings] | None = None

    @property
    def shard(self) -> dict[str, Any] | None:
        shard = self.meta.get("shard")
        return dict(shard) if shard is not None else None

    def columns(self) -> tuple[PackedStrings, np.ndarray, PackedStrings]:
        """``(ids, labels, stamps)``, ids and stamps packed (one buffer, no string object per row)."""
        if self._columns is None:
            import numpy as np

            with FeatureCache(self.path) as fc:
                f = fc.file
                stamps = read_packed(f["stamps"]) if "stamps" in f else PackedStrings.of([""] * self.rows)
                self._columns = (read_packed(f["ids"]), np.asarray(fc.labels), stamps)
        return self._columns

    @property
    def ids(self) -> PackedStrings:
        return self.columns()[0]


def merge_caches(
    parts: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    virtual: bool = False,
) -> Path:
    """Merge part caches into one. Parts made with ``--shard I/N`` are put in shard order after checking that the
    shards are complete, disjoint and from the same backbone, settings and dataset; other parts are concatenated in
    the order given, after the same key and disjointness checks.

    The rows are copied into one self-contained file, or, with ``virtual``, mapped from the parts with HDF5 virtual
    datasets (no copy: the parts must stay beside the merged file; tlkit refuses the file if one goes missing)."""
    import numpy as np

    output = Path(output)
    if not parts:
        raise CacheError("no part caches given to merge")
    read = [_read_part(Path(p)) for p in parts]
    _check_same_key(read)
    shards = any(p.shard is not None for p in read)
    ordered = _shard_order(read) if shards else read
    if not (virtual and shards):  # the shards of one run are disjoint by construction (_shard_order checked it)
        _check_disjoint(ordered)
    if output.exists() and not overwrite:
        raise CacheError(f"{output} exists; pass {{param}} to replace it", param="overwrite")
    first = read[0].meta
    meta = _merged_meta(read, ordered)
    layers, n_views, store_dtype = first.get("layers", []), int(first.get("views") or 0), first["store_dtype"]
    if virtual:
        if any(Path(p.path).resolve() == output.resolve() for p in ordered):
            raise CacheError(f"{output} is one of the parts; a virtual merge maps its parts, so write it elsewhere")
        spec = [VirtualPart(p.path, p.rows, str(p.meta.get("run_id", "")), dict(p.meta.get("checksums") or {}))
                for p in ordered]  # fmt: skip
        meta["merged_virtual"] = True
        with cache_lock(output):
            atomic_write_with(output, lambda tmp: write_virtual(Path(tmp), output, spec, meta, layers, n_views))
        return output
    columns = [p.columns() for p in ordered]
    plan = AssemblyPlan(
        sources=[p.path for p in ordered],
        src=np.concatenate([np.full(p.rows, j, np.int32) for j, p in enumerate(ordered)]),
        rows=np.concatenate([np.arange(p.rows, dtype=np.int64) for p in ordered]),
        ids=PackedStrings.concat([c[0] for c in columns]),
        labels=np.concatenate([c[1] for c in columns]).astype(np.int64),
        stamps=PackedStrings.concat([c[2] for c in columns]),
    )
    with cache_lock(output):
        atomic_write_with(output, lambda tmp: assemble(Path(tmp), plan, meta, layers=layers, n_views=n_views,
                                                       store_dtype=store_dtype, progress=progress))  # fmt: skip
    return output


def _read_part(path: Path) -> _Part:
    with FeatureCache(path) as fc:
        return _Part(path, fc.meta, len(fc))


def _check_same_key(parts: Sequence[_Part]) -> None:
    first = parts[0]
    for p in parts[1:]:
        diff = key_mismatch(first.meta.get("key", {}), p.meta.get("key", {}))
        if diff:
            raise FingerprintMismatchError(f"{p.path} was not made like {first.path} ({'; '.join(diff)}); merge only "
                                           f"parts of one extraction")  # fmt: skip
        if p.meta.get("class_names") != first.meta.get("class_names"):
            raise FingerprintMismatchError(
                f"{p.path} has other class names than {first.path}; merge only parts of one dataset"
            )


def _check_disjoint(parts: Sequence[_Part]) -> None:
    """No id in two parts: 64-bit hashes of every id sorted together (8 bytes a row), equal hashes checked exactly."""
    import numpy as np

    hashes = [np.fromiter((hash(raw) for raw in p.ids.raw_items()), np.int64, count=len(p.ids)) for p in parts]
    if not hashes:
        return
    flat = np.concatenate(hashes)
    owner = np.concatenate([np.full(len(h), k, np.int32) for k, h in enumerate(hashes)])
    row = np.concatenate([np.arange(len(h), dtype=np.int64) for h in hashes])
    order = np.argsort(flat, kind="stable")
    sorted_hashes = flat[order]
    same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    shared: dict[int, set[bytes]] = {}
    starts = same[np.r_[True, np.diff(same) > 1]] if len(same) else same  # each run of equal hashes
    for start in starts.tolist():
        end = start + 1
        while end < len(order) and sorted_hashes[end] == sorted_hashes[start]:
            end += 1
        first_owner: dict[bytes, int] = {}
        for i in order[start:end].tolist():  # in part order (stable sort): the later part is the one that overlaps
            raw = parts[int(owner[i])].ids.raw(int(row[i]))
            if raw in first_owner and first_owner[raw] != int(owner[i]):
                shared.setdefault(int(owner[i]), set()).add(raw)
            first_owner.setdefault(raw, int(owner[i]))
    if shared:
        k = min(shared)
        dup = sorted(shared[k])
        raise CacheError(f"{parts[k].path} overlaps another part ({len(dup)} shared id(s), e.g. "
                         f"{id_from_bytes(dup[0])!r}); parts must be disjoint")  # fmt: skip


def _merged_meta(parts: Sequence[_Part], ordered: Sequence[_Part]) -> dict[str, Any]:
    """The first part's metadata, less what describes one part, plus the skips and flags of all of them."""
    drop = ("checksums", "shard", "n_items", "complete", "virtual", "merged_virtual")
    meta = {k: v for k, v in parts[0].meta.items() if k not in drop}
    meta["skipped"] = [s for p in ordered for s in p.meta.get("skipped", [])]
    flags: dict[str, int] = {}
    for p in parts:
        for k, v in (p.meta.get("flags") or {}).items():
            flags[k] = flags.get(k, 0) + int(v)
    meta.update(flags=flags, run_id=uuid.uuid4().hex, created=timestamp(), merged_from=[str(p.path) for p in parts])
    return meta


def _shard_order(parts: Sequence[_Part]) -> list[_Part]:
    """Shards of one run, each once, in shard order; refuses a mix of shards and other parts, or a missing shard."""
    shards = [p.shard for p in parts]
    if any(s is None for s in shards):
        raise CacheError("some parts are shards (--shard I/N) and some are not; merge shards of one run only")
    counts = {s["count"] for s in shards if s is not None}
    fps = {p.meta.get("dataset", {}).get("fingerprint") for p in parts}
    if len(counts) != 1 or len(fps) != 1:
        raise FingerprintMismatchError("the shards come from different datasets or shard counts; rerun them with "
                                       "the same input and --shard I/N")  # fmt: skip
    count = counts.pop()
    seen: dict[int, _Part] = {}
    for p in parts:
        index = int(p.meta["shard"]["index"])
        if index in seen:
            raise CacheError(f"shard {index}/{count} is given twice ({seen[index].path} and {p.path})")
        seen[index] = p
    absent = [str(i) for i in range(count) if i not in seen]
    if absent:
        raise CacheError(f"missing shard(s) {', '.join(absent)} of {count}; run them with --shard I/{count} first")
    ordered = [seen[i] for i in sorted(seen)]
    _check_shards_cover(ordered)
    return ordered


def _check_shards_cover(parts: Sequence[_Part]) -> None:
    """Shards of one run cut the same windows and, together, hold every item once (as a row or as a skip)."""
    metas: list[Mapping[str, Any]] = [p.meta for p in parts]
    windows = {m["shard"].get("window") for m in metas}
    if len(windows) != 1:
        listing = ", ".join(f"{p.path.name}: {p.meta['shard'].get('window')}" for p in parts)
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
    covered = sum(p.rows for p in parts) + sum(skips)
    if covered != expected:
        raise CacheError(f"the shards hold {covered} of the {expected} items of {ds.get('root')}; they are not "
                         f"complete, rerun every --shard I/N with the same input and options")  # fmt: skip
