"""Hugging Face ``datasets`` folders written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), read with the
``datasets`` library (memory-mapped Arrow, nothing loaded into memory).

One row is one item, with id ``SPLIT:ROW`` (``train:17``; a plain ``Dataset`` uses its folder's name). Options
(reader options, ``-O KEY=VALUE`` on the CLI):

- ``split``: the split of a ``DatasetDict`` (default: its only split, or ``train``);
- ``image_column`` (default ``image``) / ``audio_column`` (default ``audio``): an ``Image``/``Audio`` feature (read
  undecoded: the stored bytes, or the stored path), a binary column, or a string column of paths;
- ``text_column`` (default ``text``);
- ``label_column`` (default ``label`` when present): a ``ClassLabel`` (its names are the class names, in its
  order), or plain class names or integers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlkit.data.base import Dataset, Record, Skipped
from tlkit.data.remote import PerThread, filesystem, is_url
from tlkit.data.streams import Entry, StreamReader, label_text, option, text_row
from tlkit.errors import BadInputError, BadItemError

MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
DEFAULT_LABEL = "label"
#: Rows whose label (and text) cells are read at a time while listing.
BLOCK_ROWS = 65536


def is_saved_dataset(location: str) -> bool:
    """Whether ``location`` is a local folder written by ``save_to_disk``."""
    p = Path(location).expanduser()
    return (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file())


class HFDatasetsReader(StreamReader):
    format = "hf-datasets"
    needs = ("datasets", "hf-datasets")

    def __init__(self, modality: str = "image") -> None:
        super().__init__(modality)
        self._open: PerThread[dict[tuple[str, str | None], Any]] = PerThread(dict)

    def recognises(self, location: str) -> bool:
        return not is_url(location) and is_saved_dataset(location)

    def scan_location(self, location: str, options: dict[str, Any]) -> Dataset:
        split = option(options, "split")
        ds, split = self._load(location, split)
        column = option(options, f"{self.modality}_column", default=self.modality) or self.modality
        names = list(ds.column_names)
        if column not in names:
            raise BadInputError(f"{location}: no column {column!r}; columns are {', '.join(names)} (set {{param}})",
                                param=f"{self.modality}_column")  # fmt: skip
        label = option(options, "label_column") or (DEFAULT_LABEL if DEFAULT_LABEL in names else None)
        if label is not None and label not in names:
            raise BadInputError(f"{location}: no column {label!r}; columns are {', '.join(names)} (set {{param}})",
                                param="label_column")  # fmt: skip
        class_names = None
        if label is not None:
            feature = ds.features[label]
            if hasattr(feature, "names") and hasattr(feature, "int2str"):  # a ClassLabel
                class_names = list(feature.names)
        prefix = split or Path(location.rstrip("/")).name
        fingerprint = str(getattr(ds, "_fingerprint", "") or "")
        skipped: list[Skipped] = []

        def entries() -> Iterator[Entry]:  # in blocks of rows: the label (and text) column is never all in memory
            for a in range(0, len(ds), BLOCK_ROWS):
                n = min(BLOCK_ROWS, len(ds) - a)
                raw_labels: list[Any] = ds.data.column(label).slice(a, n).to_pylist() if label else [None] * n
                if class_names is not None:
                    raw_labels = [class_names[v] if isinstance(v, int) and 0 <= v < len(class_names) else None
                                  for v in raw_labels]  # fmt: skip
                texts = ds.data.column(column).slice(a, n).to_pylist() if self.modality == "text" else None
                for k, raw in enumerate(raw_labels):
                    i = a + k
                    rid = f"{prefix}:{i}"
                    name = label_text(raw)
                    length, stamp = None, f"{fingerprint}:{name}"
                    if texts is not None:
                        row = text_row(rid, name, texts[k], column, skipped)
                        if row is None:
                            continue
                        length, stamp = row
                    yield rid, (location, split, i, column), name, length, stamp

        return self.dataset(location, entries(), skipped, options, class_names)

    def _load(self, location: str, split: str | None) -> tuple[Any, str | None]:
        datasets = self.library()
        try:
            loaded = datasets.load_from_disk(location)
        except FileNotFoundError as exc:
            raise BadInputError(f"{location}: not a folder written by save_to_disk ({exc}); check the path") from exc
        if hasattr(loaded, "keys") and not hasattr(loaded, "features"):  # a DatasetDict
            splits = list(loaded.keys())
            if split is None:
                split = splits[0] if len(splits) == 1 else ("train" if "train" in splits else None)
            if split is None or split not in splits:
                raise BadInputError(f"{location}: the dataset has splits {', '.join(splits)}; choose one with "
                                    f"{{param}}", param="split")  # fmt: skip
            return loaded[split], split
        if split is not None:
            raise BadInputError(f"{location}: a single Dataset has no splits; leave {{param}} out", param="split")
        return loaded, None

    def _rows(self, location: str, split: str | None) -> Any:
        opened = self._open.get()  # per thread of each process, as the other readers' open files
        key = (location, split)
        ds = opened.get(key)
        if ds is None:
            ds = opened[key] = self._load(location, split)[0].with_format("arrow")
        return ds

    def read(self, record: Record) -> Any:
        location, split, row, column = record.source
        try:
            cell = self._rows(location, split)[int(row)].column(column)[0].as_py()
        except BadInputError as exc:
            raise BadItemError(record.id, str(exc)) from exc
        if self.modality == "text" or cell is None:
            return cell
        if isinstance(cell, dict):  # an Image/Audio feature: the stored bytes, else the stored path
            if cell.get("bytes") is not None:
                return bytes(cell["bytes"])
            cell = cell.get("path")
            if cell is None:
                return None
        if isinstance(cell, bytes | bytearray | memoryview):
            return bytes(cell)
        target = str(cell) if is_url(str(cell)) or str(cell).startswith("/") else os.path.join(location, str(cell))
        fs, inner = filesystem(target)
        try:
            with fs.open(inner, "rb") as fh:
                data: bytes = fh.read()
        except FileNotFoundError as exc:
            raise BadItemError(record.id, f"file not found ({cell})") from exc
        return data


__all__ = ["HFDatasetsReader", "is_saved_dataset"]
