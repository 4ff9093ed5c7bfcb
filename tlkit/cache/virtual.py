"""Virtual merges (``tlkit cache merge --virtual``): one cache file whose row datasets are HDF5 virtual datasets
mapping the rows of the part caches, in merge order, without copying them.

Every row dataset is mapped: ``features``, ``layers/*``, ``views``, and ``ids``, ``stamps`` and ``labels`` too (HDF5
maps variable-length strings as well), so a merge reads and writes only the parts' metadata and shapes: its cost does
not grow with the number of rows. The file is an ordinary tlkit cache to every reader (plain h5py included: virtual
datasets are part of HDF5 since 1.10). The parts are named relative to the merged file's folder (``virtual`` in the
metadata, with each part's ``run_id``, row count and checksums), so the folder can be moved or copied whole; ``tlkit
cache verify`` hashes each part's rows through the mapping against that part's checksums. A part that is missing or
was rewritten after the merge makes every tlkit command refuse the file with the fix, and the features' fill value is
NaN, so plain h5py never reads zeros for a missing part (training refuses NaN).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlkit.cache.format import META_ATTR, dumps, layer_key
from tlkit.cache.storage import h5py_module, str_dtype

#: Virtual datasets are an HDF5 1.10 feature.
VIRTUAL_LIBVER = ("v110", "v110")


@dataclass(frozen=True)
class VirtualPart:
    """A part as the merged file maps it: its path, rows, run id and checksums (from its own metadata)."""

    path: Path
    rows: int
    run_id: str
    checksums: dict[str, str]


def write_virtual(
    tmp: Path, output: Path, parts: Sequence[VirtualPart], meta: dict[str, Any], layers: Sequence[str], n_views: int
) -> None:
    """Write the virtual cache at ``tmp`` (renamed to ``output`` by the caller): every row dataset of the parts,
    mapped in merge order. Nothing row by row is read: the cost is the parts' count, not their rows."""
    import numpy as np

    h5py = h5py_module()
    n = sum(p.rows for p in parts)
    first = next(p.path for p in parts if p.rows)
    names = ["features", *(f"layers/{layer_key(x)}" for x in layers)] + (["views"] if n_views else [])
    with h5py.File(first, "r") as f0:
        shapes = {name: (tuple(f0[name].shape), f0[name].dtype) for name in names}
        shapes["labels"] = ((int(f0["labels"].shape[0]),), np.dtype(np.int64))
        strings = ["ids", *(["stamps"] if all(_has(p.path, "stamps") for p in parts) else [])]
        for name in strings:
            shapes[name] = ((int(f0[name].shape[0]),), str_dtype())
    fill = {"labels": -1}
    with h5py.File(tmp, "w", libver=VIRTUAL_LIBVER) as f:
        for name in [*names, "labels", *strings]:
            (shape, dtype), axis = shapes[name], 1 if name == "views" else 0
            full = list(shape)
            full[axis] = n
            layout = h5py.VirtualLayout(shape=tuple(full), dtype=dtype)
            a = 0
            for part in parts:
                if not part.rows:
                    continue
                src_shape = list(shape)
                src_shape[axis] = part.rows
                source = h5py.VirtualSource(_relative(part.path, output), name, shape=tuple(src_shape))
                if axis == 0:
                    layout[a : a + part.rows] = source
                else:
                    layout[:, a : a + part.rows] = source
                a += part.rows
            value = None if name in strings else fill.get(name, np.nan)
            f.create_virtual_dataset(name, layout, fillvalue=value)
        meta = {
            **meta,
            "n_items": n,
            "dim": int(shapes["features"][0][1]),
            "checksums": {},  # each part's own, in "virtual": verify hashes the mapped rows part by part
            "virtual": [
                {"path": _relative(p.path, output), "rows": p.rows, "run_id": p.run_id, "checksums": p.checksums}
                for p in parts
            ],
        }
        meta["complete"] = True  # the completion marker, written last
        f.attrs[META_ATTR] = dumps(meta)


def _has(path: Path, name: str) -> bool:
    with h5py_module().File(path, "r") as f:
        return name in f


def virtual_problems(path: Path, meta: dict[str, Any]) -> list[str]:
    """What is wrong with a virtual cache's parts (missing, rewritten since the merge); empty for other caches."""
    from tlkit.cache.format import read_meta_attr

    problems = []
    for part in meta.get("virtual") or []:
        where = Path(part["path"])
        where = where if where.is_absolute() else path.parent / where
        fix = "put it back beside the merged file, or merge again (without --virtual for a self-contained copy)"
        if not where.is_file():
            problems.append(f"{path}: part {where} of this virtual merge is missing; {fix}")
            continue
        try:
            with h5py_module().File(where, "r") as f:
                run_id = read_meta_attr(f, where).get("run_id")
        except Exception as exc:  # noqa: BLE001 - any unreadable part is named
            problems.append(f"{path}: part {where} cannot be read ({exc}); {fix}")
            continue
        if run_id != part.get("run_id"):
            problems.append(f"{path}: part {where} was rewritten after the merge (another run); merge again")
    return problems


def _relative(path: Path, output: Path) -> str:
    """``path`` relative to the merged file's folder (so the folder moves as one), else absolute."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(output).resolve().parent)
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


__all__ = ["VIRTUAL_LIBVER", "VirtualPart", "virtual_problems", "write_virtual"]
