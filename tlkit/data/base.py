"""The reader contract: a path becomes records (stable id, source, label), class names and a skip list.

Readers scan cheaply (no decoding) and decode one item at a time in :meth:`Reader.load`, which raises
:class:`tlkit.errors.BadItemError` for a bad file or row. The extraction engine applies ``on_error``:
``skip`` records the reason and carries on, ``fail`` stops with the item's name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.errors import BadInputError, BadItemError

UNLABELLED = -1
ON_ERROR_CHOICES = ("skip", "fail")


@dataclass(frozen=True)
class Record:
    """One item: ``id`` is stable across runs (a relative path, ``file.csv:row``); ``source`` is what
    :meth:`Reader.load` decodes (a path or the text itself); ``label`` is a class index or -1."""

    id: str
    source: Any
    label: int = UNLABELLED
    length: int | None = None  # a size for length bucketing (characters, audio frames), when cheap to know
    stamp: str = ""  # what changes when the item's content changes (size and mtime for files)


@dataclass(frozen=True)
class Skipped:
    id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason}


@dataclass
class Dataset:
    """What a reader found under a path."""

    root: Path
    reader: str
    modality: str
    records: list[Record]
    class_names: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return any(r.label != UNLABELLED for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> str:
        """A hash of ids, labels, class names and item stamps: it changes when the data changes."""
        h = hashlib.sha256()
        h.update(json.dumps({"classes": self.class_names, "reader": self.reader}, sort_keys=True).encode())
        for r in self.records:
            h.update(f"{r.id}\0{r.label}\0{r.stamp}\n".encode())
        return h.hexdigest()[:32]

    def subset(self, indices: Sequence[int]) -> Dataset:
        return Dataset(
            self.root,
            self.reader,
            self.modality,
            [self.records[i] for i in indices],
            list(self.class_names),
            list(self.skipped),
            dict(self.options),
        )


class Reader(ABC):
    """Base class for readers. ``extensions`` lists the file suffixes a folder scan picks up."""

    name: str = ""
    modality: str = "image"
    extensions: tuple[str, ...] = ()

    def can_read(self, path: Path) -> bool:
        """Whether this reader understands ``path`` (used to pick a reader for a modality)."""
        path = Path(path)
        if path.is_dir():
            return True
        return path.suffix.lower() == ".csv"

    def scan(self, path: str | os.PathLike[str], **options: Any) -> Dataset:
        """Index ``path`` without decoding items. The default handles the file-based layouts: a folder with
        one subfolder per class, a flat folder (unlabelled), or a manifest CSV with ``path,label``."""
        path = Path(path).expanduser()
        if not path.exists():
            raise BadInputError(f"{path}: no such file or directory; check the input path")
        if path.is_dir():
            return self._scan_folder(path, options)
        if path.suffix.lower() == ".csv":
            return self._scan_manifest(path, options)
        raise BadInputError(f"{path}: expected a folder or a manifest .csv for {self.modality} data")

    @abstractmethod
    def load(self, record: Record) -> Any:
        """Decode one record into a raw item for ``Backbone.preprocess_item``; raise BadItemError if it is bad."""

    # -- shared scanning ----------------------------------------------------------------------------------------
    def _is_item(self, p: Path) -> bool:
        return p.is_file() and p.suffix.lower() in self.extensions and not p.name.startswith(".")

    def _record(self, root: Path, p: Path, label: int) -> Record:
        try:
            st = p.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = ""
        return Record(
            id=p.relative_to(root).as_posix(), source=str(p), label=label, length=self._length(p), stamp=stamp
        )

    def _length(self, p: Path) -> int | None:
        return None

    def _scan_folder(self, root: Path, options: dict[str, Any]) -> Dataset:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        loose = sorted(p for p in root.iterdir() if self._is_item(p))
        exts = ", ".join(self.extensions)
        if subdirs and not loose:
            records: list[Record] = []
            empty = []
            for label, d in enumerate(subdirs):
                files = sorted(p for p in d.rglob("*") if self._is_item(p))
                if not files:
                    empty.append(d.name)
                records.extend(self._record(root, p, label) for p in files)
            if empty:
                raise BadInputError(
                    f"{root}: class folder(s) {', '.join(empty)} contain no {self.modality} files ({exts}); "
                    f"add files or remove the folder(s)"
                )
            classes = [d.name for d in subdirs]
            if len(classes) == 1 and not options.get("allow_single_class"):
                raise BadInputError(
                    f"{root}: only one class folder ({classes[0]}); a classifier needs at least two, or pass "
                    f"the flat folder of files for unlabelled extraction"
                )
            return Dataset(root, self.name, self.modality, records, classes, options=_jsonable(options))
        files = sorted(p for p in root.rglob("*") if self._is_item(p)) if not subdirs else loose
        if not files:
            raise BadInputError(f"{root}: no {self.modality} files found ({exts}); check the path and extensions")
        records = [self._record(root, p, UNLABELLED) for p in files]
        return Dataset(root, self.name, self.modality, records, [], options=_jsonable(options))

    def _scan_manifest(self, manifest: Path, options: dict[str, Any]) -> Dataset:
        path_col = options.get("path_column", "path")
        label_col = options.get("label_column", "label")
        rows = read_table(manifest)
        if not rows:
            raise BadInputError(f"{manifest}: the manifest has no rows")
        columns = list(rows[0].keys())
        if path_col not in columns:
            raise BadInputError(
                f"{manifest}: no column {path_col!r}; columns are {', '.join(columns)} (set {{param}})",
                param="path_column",
            )
        has_labels = label_col in columns
        labels = sorted({r[label_col] for r in rows if r.get(label_col)}) if has_labels else []
        index = {name: i for i, name in enumerate(labels)}
        base = manifest.parent
        records = []
        skipped = []
        for line, row in enumerate(rows, start=2):
            rel = (row.get(path_col) or "").strip()
            if not rel:
                skipped.append(Skipped(f"{manifest.name}:{line}", "empty path"))
                continue
            p = (base / rel) if not Path(rel).is_absolute() else Path(rel)
            label = index[row[label_col]] if has_labels and row.get(label_col) else UNLABELLED
            rec = self._record(base, p, label) if p.exists() else Record(rel, str(p), label)
            records.append(Record(rel, rec.source, rec.label, rec.length, rec.stamp))
        return Dataset(manifest, self.name, self.modality, records, labels, skipped, _jsonable(options))


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV/TSV file as dicts; encoding errors name the line."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadInputError(f"{path}:{line}: not valid UTF-8 ({exc.reason}); re-save the file as UTF-8") from exc
    return list(csv.DictReader(text.splitlines(), delimiter=delimiter))


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if isinstance(v, str | int | float | bool | type(None))}


def check_on_error(value: str) -> str:
    if value not in ON_ERROR_CHOICES:
        raise BadInputError(f"{{param}} must be one of {', '.join(ON_ERROR_CHOICES)}, not {value!r}", param="on_error")
    return value


def load_or_skip(reader: Reader, record: Record) -> tuple[Any, str | None]:
    """``(item, None)`` or ``(None, reason)``: the per-item half of the bad-input policy."""
    try:
        return reader.load(record), None
    except BadItemError as exc:
        return None, exc.reason
    except Exception as exc:  # any decoder failure is a bad item, reported with its type
        return None, f"{type(exc).__name__}: {exc}"


def iter_ids(records: Iterable[Record]) -> list[str]:
    return [r.id for r in records]
