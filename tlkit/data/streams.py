"""What the stream readers share (WebDataset tar shards, Parquet tables, Hugging Face ``datasets`` folders).

Each is one reader class registered once per modality (``webdataset-image``, ``parquet-text``, ...), so a backbone's
modality picks the right one. Their records are small: an id ``SHARD/KEY`` or ``FILE:ROW``, a source that says where
the item's bytes are (a shard and an offset, a file and a row group), a label, a length for bucketing and a stamp.
Listing streams: entries go one at a time into a :class:`~tlkit.data.records.RecordTable` (about 100 bytes per
item, no Python object per item). Nothing is decoded while listing; :meth:`StreamReader.load` reads one item
(through a per-process cache of open files or of one row group) and decodes it like the folder readers do, so a
corrupt member or cell is a named skip.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tlkit.data.base import UNLABELLED, Dataset, Reader, Record, Skipped, _jsonable
from tlkit.data.records import RecordBuilder
from tlkit.data.remote import as_location
from tlkit.errors import BadInputError, BadItemError

MODALITIES = ("image", "text", "audio")
#: One stream entry before labels are indexed: id, source, raw label (``None``: unlabelled), length, stamp.
Entry = tuple[str, Any, str | None, int | None, str]


class StreamReader(Reader):
    """A reader of one stream format for one modality; ``format`` names the format (``webdataset``, ...)."""

    format = ""
    #: The library the format needs and the extra that installs it (for a one-line error when it is missing).
    needs: tuple[str, str] = ("", "")

    def __init__(self, modality: str = "image") -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
        self.modality = modality
        self.name = f"{self.format}-{modality}"
        self.returns_decoded_images = modality == "image"  # images come from decode_image unchanged

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.modality!r})"

    def __getstate__(self) -> dict[str, Any]:  # open files and row-group caches never travel to a worker
        return {"modality": self.modality}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["modality"])  # type: ignore[misc]

    def can_read(self, path: Path) -> bool:
        return self.recognises(os.fspath(path))

    def recognises(self, location: str) -> bool:
        """Whether ``location`` (a path, pattern or URL) looks like this format; no file is opened remotely."""
        raise NotImplementedError

    def scan(self, path: str | os.PathLike[str], **options: Any) -> Dataset:
        location = as_location(path)
        return self.scan_location(os.fspath(location), options)

    def scan_location(self, location: str, options: dict[str, Any]) -> Dataset:
        raise NotImplementedError

    def load(self, record: Record) -> Any:
        return self.decode(self.read(record), record.id)

    def read(self, record: Record) -> bytes | str:
        """The item's raw bytes (or text) from its source."""
        raise NotImplementedError

    # -- shared helpers -----------------------------------------------------------------------------------------
    def decode(self, raw: Any, item_id: str) -> Any:
        """Bytes (or a text cell) into the raw item the modality's backbones take."""
        if raw is None:
            raise BadItemError(item_id, f"empty {self.modality} cell (null)")
        if self.modality == "text":
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8-sig")
                except UnicodeDecodeError as exc:
                    raise BadItemError(item_id, f"not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
            text = str(raw)
            if not text.strip():
                raise BadItemError(item_id, "empty text")
            return text
        if not isinstance(raw, bytes):
            raise BadItemError(item_id, f"expected encoded {self.modality} bytes, got {type(raw).__name__}")
        if self.modality == "image":
            from tlkit.data.image import decode_image

            return decode_image(raw, item_id)
        from tlkit.data.audio import decode_audio

        return decode_audio(raw, item_id)

    def library(self) -> Any:
        """Import the format's library, or a one-line error naming the extra that installs it."""
        import importlib

        module, extra = self.needs
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            from tlkit.errors import NotInstalled

            raise NotInstalled(module.split(".")[0], extra, f"reading {self.format} data") from exc

    def dataset(
        self,
        root: str,
        entries: Iterable[Entry],
        skipped: list[Skipped],
        options: dict[str, Any],
        class_names: Sequence[str] | None = None,
        listed: Callable[[int], None] | None = None,
    ) -> Dataset:
        """The :class:`Dataset`, its records a :class:`~tlkit.data.records.RecordTable` filled from ``entries`` (an
        iterator: no entry is kept as an object): raw labels indexed into sorted class names (or into
        ``class_names`` when the format names its classes), an error when nothing is readable. ``listed`` is called
        with the number of entries once they are all read (a reader's own check of the whole listing)."""
        import numpy as np

        builder = RecordBuilder()
        codes = array("i")
        distinct: dict[str | None, int] = {}
        for rid, source, raw, length, stamp in entries:
            builder.append(rid, source, UNLABELLED, length, stamp)
            code = distinct.get(raw)
            if code is None:
                code = distinct[raw] = len(distinct)
            codes.append(code)
        if listed is not None:
            listed(len(builder))
        if not len(builder):
            first = f" ({len(skipped)} skipped, first {skipped[0].id}: {skipped[0].reason})" if skipped else ""
            raise BadInputError(f"{root}: no {self.modality} items found{first}; check the path and the columns")
        classes = list(class_names) if class_names is not None else sorted_labels(set(distinct) - {None})
        index = {name: i for i, name in enumerate(classes)}
        lut = np.array([UNLABELLED if v is None else index.get(v, _NOT_A_CLASS) for v in distinct], np.int64)
        labels = lut[np.frombuffer(codes, np.int32)]
        table = builder.build().with_labels(labels)
        outside = np.flatnonzero(labels == _NOT_A_CLASS)
        if len(outside):
            raws = list(distinct)
            for i in outside.tolist():
                raw = raws[codes[i]]
                skipped.append(Skipped(table.ids[i], f"label {raw!r} is not one of the {len(classes)} class names"))
            table = table.take(np.flatnonzero(labels != _NOT_A_CLASS))
        return Dataset(as_location(root), self.name, self.modality, table, classes, skipped, _jsonable(options))


#: A raw label outside the format's class names (a skip).
_NOT_A_CLASS = -2


def label_text(value: Any) -> str | None:
    """A label value as a class name (``None`` when missing or blank): ``3``, ``"cat"``, ``b"3\\n"``."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def text_row(rid: str, name: str | None, body: Any, column: str, skipped: list[Skipped]) -> tuple[int, str] | None:
    """A text row's length and stamp (a hash of its label and text, so an edited row is re-extracted), or ``None``
    after recording the skip of a missing or blank text in ``column``."""
    if body is None or not str(body).strip():
        skipped.append(Skipped(rid, f"empty {column!r}"))
        return None
    text = str(body)
    return len(text), hashlib.sha1(f"{name}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def sorted_labels(labels: Iterable[str | None]) -> list[str]:
    """Class names in a stable order: numerically when every label is an integer (so 10 follows 9)."""
    names = {x for x in labels if x is not None}
    try:
        return sorted(names, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(names)


def option(options: dict[str, Any], *names: str, default: str | None = None) -> str | None:
    """The first of ``names`` set in ``options`` (the CLI's ``--text-column`` and ``-O image_column=...``)."""
    for name in names:
        value = options.get(name)
        if value not in (None, ""):
            return str(value)
    return default


__all__ = ["MODALITIES", "Entry", "StreamReader", "label_text", "option", "sorted_labels"]
