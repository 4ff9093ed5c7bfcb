"""Data readers: turn a path into records, labels, class names and stable ids."""

from __future__ import annotations

from tlkit.data.base import (
    UNLABELLED,
    Dataset,
    Reader,
    Record,
    Skipped,
    load_or_skip,
)
from tlkit.data.open import open_dataset

__all__ = ["UNLABELLED", "Dataset", "Reader", "Record", "Skipped", "load_or_skip", "open_dataset"]
