"""Choosing a reader for a path and a modality, among the readers that plugins registered."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tlkit.data.base import Dataset, Reader
from tlkit.errors import BadInputError


def pick_reader(path: Path | str, modality: str, reader: str | None = None) -> Reader:
    """The named reader, or the first registered reader of ``modality`` that can read ``path``."""
    from tlkit.host.registry import get_reader_entry, get_registry

    if reader:
        return get_reader_entry(reader).reader
    candidates = [e.reader for e in get_registry().readers.values() if e.modality == modality]
    for r in candidates:
        if r.can_read(path):  # type: ignore[arg-type]  # a URL or pattern stays a string
            return r
    if not candidates:
        raise BadInputError(f"no reader is installed for {modality} data")
    raise BadInputError(
        f"{path}: no {modality} reader understands this path "
        f"(readers: {', '.join(r.name for r in candidates)}); pass a folder, or a supported table/manifest file"
    )


def open_dataset(
    path: str | os.PathLike[str], modality: str = "image", reader: str | None = None, **options: Any
) -> Dataset:
    """Scan ``path`` with a suitable reader. ``options`` go to the reader (``text_column``, ``label_column``, ...).
    A URL (``https://``, ``s3://``) or a pattern (``shards/{00000..00009}.tar``, ``data/*.parquet``) is passed on as
    a string, for the readers that take them (see ``docs/large-datasets.md``)."""
    from tlkit.data.remote import as_location

    location = as_location(path)
    if isinstance(location, Path) and not location.exists():
        raise BadInputError(f"{location}: no such file or directory; check the input path")
    from tlkit.runtime.probe import cpu_count

    chosen = pick_reader(location, modality, reader)
    chosen.max_listing_processes = cpu_count()
    return chosen.scan(location, **options)


def get_reader(dataset: Dataset) -> Reader:
    from tlkit.host.registry import get_reader_entry

    return get_reader_entry(dataset.reader).reader
