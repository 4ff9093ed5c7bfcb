"""Canonical JSON: one encoding for fingerprints, cache metadata and key comparison.

Sorted keys, and the values that JSON lacks made plain (paths as strings, tuples and sets as lists, numpy scalars as
numbers), so the same data always gives the same text, and so the same hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for the values tlkit records."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)


def canonical_json(data: Any) -> str:
    """``data`` as canonical JSON text."""
    return json.dumps(data, sort_keys=True, default=json_default)


__all__ = ["canonical_json", "json_default"]
