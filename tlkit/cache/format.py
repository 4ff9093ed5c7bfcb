"""The cache's public format: names and layout on disk, the JSON metadata, and the key that decides which rows mix.

The format is documented in ``docs/cache-format.md``; third parties read it with plain h5py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.canonical import canonical_json
from tlkit.data.records import PackedStrings
from tlkit.errors import CacheError

if TYPE_CHECKING:
    import h5py

FORMAT_NAME = "tlkit-features"
FORMAT_VERSION = 1
#: The root attribute that holds the JSON metadata (the completion marker included).
META_ATTR = "tlkit"
#: The root attribute of a work-folder segment.
SEGMENT_ATTR = "tlkit-segment"
WORK_SUFFIX = ".work"
LOCK_SUFFIX = ".lock"
PLAN_FILE = "plan.json"
#: HDF5 1.8 object formats: readable by every h5py/HDF5 of the last 15 years, and large attributes still work.
LIBVER = ("v108", "v108")
STORE_DTYPES = ("float32", "float16")
#: Rows copied per step while assembling, exporting or verifying: bounds memory whatever N is.
COPY_ROWS = 8192


# ---------------------------------------------------------------------------------------------------------------
# names on disk
# ---------------------------------------------------------------------------------------------------------------
def work_dir_for(path: str | os.PathLike[str]) -> Path:
    """The work folder that holds an unfinished extraction into ``path``."""
    path = Path(path)
    return path.with_name(path.name + WORK_SUFFIX)


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    """The lock file a writer of ``path`` holds."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def layer_key(name: str) -> str:
    """The dataset name under ``layers/`` for a block name (``/`` would make a subgroup, so it is escaped)."""
    return name.replace("%", "%25").replace("/", "%2F")


# ---------------------------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------------------------
def read_strings(dataset: Any) -> list[str]:
    """An ``ids`` or ``stamps`` dataset as strings. Ids are stored as the bytes they stand for (UTF-8; a file name
    that is not valid UTF-8 keeps its own bytes), read back surrogate-escaped, so ``os.fsencode(id)`` is the name."""
    return list(dataset.asstr(errors="surrogateescape")[()])


def read_packed(dataset: Any, block: int = COPY_ROWS) -> PackedStrings:
    """An ``ids`` or ``stamps`` dataset as :class:`~tlkit.data.records.PackedStrings` (one buffer, no Python string
    per row), read block by block so a large cache never has a string object per row in memory."""
    parts = [PackedStrings.from_bytes(list(dataset[a : a + block])) for a in range(0, int(dataset.shape[0]), block)]
    return PackedStrings.concat(parts)


# ---------------------------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------------------------
def dumps(data: Any) -> str:
    """Canonical JSON (sorted keys; paths, tuples and numpy scalars made plain) for metadata and key comparison."""
    return canonical_json(data)


def timestamp() -> str:
    """The local time as recorded in ``created``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_meta_attr(f: h5py.File, path: Path) -> dict[str, Any]:
    """The metadata of an open cache file; :class:`CacheError` when the file is not a tlkit feature cache."""
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
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CacheError(f"{path}: not a tlkit feature cache (format {found!r}); pass a file made by tlkit")
    return meta


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
    "decode": "image decoding",
}

#: What a key field added after caches were written reads as when a key lacks it. ``decode``: caches of images made
#: before reduced-size decoding were decoded in full, which differs from ``reduced`` by less than the tolerance
#: ``docs/extraction.md`` states (per-row cosine >= 0.999), so their rows may be completed with reduced decoding.
KEY_DEFAULTS: dict[str, Any] = {"decode": "reduced"}


def key_mismatch(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two run keys (empty when rows may be mixed)."""
    out = []
    for k, label in KEY_FIELDS.items():
        a, b = have.get(k, KEY_DEFAULTS.get(k)), want.get(k, KEY_DEFAULTS.get(k))
        if dumps(a) != dumps(b):
            out.append(f"{label} {_short(a)} vs {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
