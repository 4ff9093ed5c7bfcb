"""Data readers: turn a path into records, labels, class names and stable ids.

Choosing a reader for a path (``open_dataset``) lives with the registry, in :mod:`tlkit.host.readers`.
"""

from __future__ import annotations

from tlkit.data.base import (
    UNLABELLED,
    Dataset,
    Reader,
    Record,
    Skipped,
    load_or_skip,
)

__all__ = ["UNLABELLED", "Dataset", "Reader", "Record", "Skipped", "load_or_skip"]
