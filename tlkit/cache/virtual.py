"""Virtual merges (``tlkit cache merge --virtual``): one cache file whose feature, layer and view datasets are HDF5
virtual datasets mapping the rows of the part caches, in merge order, without copying them.

The file is an ordinary tlkit cache to every reader (plain h5py included: virtual datasets are part of HDF5 since
1.10); ``ids``, ``labels`` and ``stamps`` are real datasets in it. The parts are named relative to the merged file's
folder (``virtual`` in the metadata, with each part's ``run_id``), so the folder can be moved or copied whole. A
part that is missing or was rewritten after the merge makes every tlkit command refuse the file with the fix, and
the virtual datasets' fill value is NaN, so plain h5py never reads zeros for a missing part (training refuses NaN).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.format import META_ATTR, dumps, layer_key
from tlkit.cache.storage import as_str_array, h5py_module, str_dtype
from tlkit.data.ids import id_bytes

if TYPE_CHECKING:
    import numpy as np

#: Virtual datasets are an HDF5 1.10 feature.
VIRTUAL_LIBVER = ("v110", "v110")


def write_virtual(
    tmp: Path,
    output: Path,
    parts: Sequence[tuple[Path, int, str]],
    ids: list[str],
    labels: np.ndarray,
    stamps: list[str],
    meta: dict[str, Any],
    layers: Sequence[str],
    n_views: int,
) -> None:
    """Write the virtual cache at ``tmp`` (renamed to ``output`` by the caller). ``parts`` are ``(path, rows,
    run_id)`` in merge order."""
    import numpy as np

    h5py = h5py_module()
    n = len(ids)
    first = next(p for p, rows, _ in parts if rows)
    names = ["features", *(f"layers/{layer_key(x)}" for x in layers)] + (["views"] if n_views else [])
    with h5py.File(first, "r") as f0:
        shapes = {name: (tuple(f0[name].shape), f0[name].dtype) for name in names}
    with h5py.File(tmp, "w", libver=VIRTUAL_LIBVER) as f:
        for name in names:
            (shape, dtype), axis = shapes[name], 1 if name == "views" else 0
            full = list(shape)
            full[axis] = n
            layout = h5py.VirtualLayout(shape=tuple(full), dtype=dtype)
            a = 0
            for path, rows, _ in parts:
                if not rows:
                    continue
                src_shape = list(shape)
                src_shape[axis] = rows
                source = h5py.VirtualSource(_relative(path, output), name, shape=tuple(src_shape))
                if axis == 0:
                    layout[a : a + rows] = source
                else:
                    layout[:, a : a + rows] = source
                a += rows
            f.create_virtual_dataset(name, layout, fillvalue=np.nan)
        for column, values in (("ids", ids), ("stamps", stamps)):
            f.create_dataset(column, data=as_str_array(values), dtype=str_dtype())
        f.create_dataset("labels", data=np.asarray(labels, np.int64))
        hashed = hashlib.sha256()
        for i in ids:
            hashed.update(id_bytes(i) + b"\n")
        meta = {
            **meta,
            "n_items": n,
            "dim": int(shapes["features"][0][1]),
            "checksums": {
                "ids": hashed.hexdigest(),
                "labels": hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest(),
            },
            "virtual": [{"path": _relative(p, output), "rows": rows, "run_id": rid} for p, rows, rid in parts],
        }
        meta["complete"] = True  # the completion marker, written last
        f.attrs[META_ATTR] = dumps(meta)


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


__all__ = ["VIRTUAL_LIBVER", "virtual_problems", "write_virtual"]
