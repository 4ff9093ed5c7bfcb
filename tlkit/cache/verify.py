"""``tlkit cache verify``: check a cache end to end, without trusting anything in it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.format import COPY_ROWS, FORMAT_VERSION, layer_key, read_meta_attr, read_strings, work_dir_for
from tlkit.cache.storage import folder_instead_of_cache, h5py_module, le_bytes, live_writer
from tlkit.cache.virtual import virtual_problems
from tlkit.cache.workdir import describe_work, unfinished_cache
from tlkit.data.ids import id_bytes
from tlkit.errors import CacheError

if TYPE_CHECKING:
    import h5py


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
    path = Path(path)
    work = work_dir_for(path)
    if not path.exists():
        why = unfinished_cache(path)
        if why is not None:
            return VerifyReport(path, "incomplete", [why])
        return VerifyReport(path, "missing", [f"{path}: no such file"])
    folder = folder_instead_of_cache(path)
    if folder is not None:
        return VerifyReport(path, "missing", [folder])
    try:
        f = h5py_module().File(path, "r")
    except OSError as exc:
        return VerifyReport(path, "corrupt", [f"not a readable HDF5 file ({str(exc).splitlines()[0]})"])
    with f:
        try:
            meta = read_meta_attr(f, path)
        except CacheError as exc:
            return VerifyReport(path, "corrupt", [str(exc)])
        rep = VerifyReport(path, "ok")
        _check_file(f, meta, rep, checksums)
    writer = live_writer(path)
    if writer is not None:
        rep.warnings.append(f"an update is being written by a live tlkit process ({writer}); it replaces this file "
                            f"when it finishes")  # fmt: skip
    elif work.exists():
        rep.warnings.append(f"an interrupted update is pending ({describe_work(work)}); rerun tlkit extract to "
                            f"finish it")  # fmt: skip
    return rep


def _check_file(f: h5py.File, meta: dict[str, Any], rep: VerifyReport, checksums: bool) -> None:
    if not meta.get("complete"):
        rep.status = "incomplete"
        rep.problems.append("no completion marker: the file was not finished; rerun tlkit extract")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        rep.problems.append(f"format version {meta.get('format_version')} is newer than this tlkit reads")
    missing = [d for d in ("features", "labels", "ids") if d not in f]
    if missing:
        rep.status = "corrupt"
        rep.problems.append(f"missing dataset(s): {', '.join(missing)}")
        return
    rep.items = int(f["features"].shape[0])
    rep.problems.extend(virtual_problems(rep.path, meta))  # a virtual merge's parts (verify each part as well)
    if rep.problems:
        rep.status = "corrupt"
        return
    rep.problems.extend(_shape_problems(f, meta, rep.items))
    if not rep.problems:
        _check_contents(f, meta, rep, checksums)
    if rep.problems and rep.status == "ok":
        rep.status = "corrupt"


def _shape_problems(f: h5py.File, meta: dict[str, Any], n: int) -> list[str]:
    """Every dataset has N rows, and the metadata lists what the file holds."""
    problems = []
    expect = {"labels": (n,), "ids": (n,)}
    if "stamps" in f:
        expect["stamps"] = (n,)
    for name in meta.get("layers", []):
        key = f"layers/{layer_key(name)}"
        if key not in f:
            problems.append(f"layer {name!r} listed in metadata but {key} is missing")
        elif f[key].shape[0] != n:
            problems.append(f"{key} has {f[key].shape[0]} rows, features has {n}")
    if meta.get("views"):
        if "views" not in f:
            problems.append("metadata lists views but the 'views' dataset is missing")
        elif tuple(f["views"].shape) != (meta["views"], n, f["features"].shape[1]):
            problems.append(f"views has shape {tuple(f['views'].shape)}, expected ({meta['views']}, {n}, D)")
    for name, shape in expect.items():
        if tuple(f[name].shape) != shape:
            problems.append(f"{name} has shape {tuple(f[name].shape)}, expected {shape}")
    if meta.get("n_items") is not None and meta["n_items"] != n:
        problems.append(f"metadata says {meta['n_items']} items, features has {n}")
    return problems


def _check_contents(f: h5py.File, meta: dict[str, Any], rep: VerifyReport, checksums: bool) -> None:
    """Unique ids, labels in range, checksums that match, finite features; reads the data block by block."""
    import numpy as np

    n = int(rep.items or 0)
    ids = read_strings(f["ids"])
    if len(set(ids)) != len(ids):
        rep.problems.append(f"{len(ids) - len(set(ids))} duplicate id(s)")
    labels = f["labels"][()]
    k = len(meta.get("class_names", []))
    bad = int(((labels < -1) | (labels >= max(k, 0))).sum()) if len(labels) else 0
    if bad:
        rep.problems.append(f"{bad} label(s) outside -1..{k - 1}")
    nonfinite = 0
    datasets = ["features", *(f"layers/{layer_key(x)}" for x in meta.get("layers", []))]
    for a, b, sums in _spans(meta, n, checksums):
        hashers = {name: hashlib.sha256() for name in sums}
        for start in range(a, b, COPY_ROWS):
            end = min(start + COPY_ROWS, b)
            for name in datasets:
                block = f[name][start:end]
                nonfinite += int((~np.isfinite(block)).any(axis=1).sum()) if name == "features" else 0
                if name in hashers:
                    hashers[name].update(le_bytes(block))
            for kk in range(int(meta.get("views") or 0)):
                if f"views/{kk}" in hashers:
                    hashers[f"views/{kk}"].update(le_bytes(f["views"][kk, start:end]))
        if "ids" in hashers:
            hashers["ids"].update(b"".join(id_bytes(i) + b"\n" for i in ids[a:b]))
        if "labels" in hashers:
            hashers["labels"].update(np.ascontiguousarray(labels[a:b], dtype="<i8").tobytes())
        where = f" (rows {a}..{b - 1}, a part of this virtual merge)" if meta.get("virtual") and sums else ""
        for name, h in hashers.items():
            if h.hexdigest() != sums[name]:
                rep.problems.append(f"checksum mismatch in {name}{where}: the data changed after it was written")
    if nonfinite:
        rep.warnings.append(f"{nonfinite} row(s) of features contain NaN or inf")


def _spans(meta: dict[str, Any], n: int, checksums: bool) -> list[tuple[int, int, dict[str, str]]]:
    """``(first row, end row, checksums)`` to verify: the whole file against its own checksums, or, for a virtual
    merge that records its parts' checksums, each part's rows (read through the mapping) against that part's."""
    if not checksums:
        return [(0, n, {})]
    parts = meta.get("virtual") or []
    if not parts or not all("checksums" in p for p in parts):
        return [(0, n, dict(meta.get("checksums", {})))]
    spans, a = [], 0
    for part in parts:
        rows = int(part["rows"])
        spans.append((a, a + rows, dict(part["checksums"])))
        a += rows
    return spans
