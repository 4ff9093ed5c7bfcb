"""``tlkit cache export``: the features as ``.npz`` or ``.csv``, streamed so that memory stays flat."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from tlkit.cache.format import COPY_ROWS
from tlkit.cache.reader import FeatureCache
from tlkit.cache.storage import write_error
from tlkit.data.ids import csv_cell
from tlkit.errors import CacheError
from tlkit.fileio import atomic_write_with, output_file

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
        raise CacheError(f"{{param}} must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}", param="fmt")
    out = output_file(out, f"features.{fmt}", CacheError)
    write = _export_npz if fmt == "npz" else _export_csv
    with FeatureCache(path) as fc:
        src = fc.source(layer, view)
        try:
            atomic_write_with(out, lambda tmp: write(fc, src, Path(tmp)))
        except OSError as exc:
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
                    [
                        csv_cell(ids[a + i]),
                        lab,
                        csv_cell(names[lab]) if 0 <= lab < len(names) else "",
                        *(repr(float(v)) for v in row),
                    ]  # fmt: skip
                )
