"""The text reader: CSV, TSV or JSONL tables with a text column and an optional label column, or a folder of
``.txt`` files with one subfolder per class.

Each record's ``source`` is the text itself and its ``length`` the number of characters (for length bucketing).
Table rows get ids ``file.csv:LINE`` (the line where the row starts); files get their relative path. Rows or files
with no text are recorded in ``Dataset.skipped``; a missing column or a file that is not UTF-8 is an error that
names the columns that exist, or the line at fault.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tlkit.data.base import UNLABELLED, Dataset, Reader, Record, Skipped, _jsonable
from tlkit.data.listing import os_error_reason
from tlkit.data.tables import csv_rows, jsonl_rows, read_text_file, utf8_problem
from tlkit.errors import BadInputError

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"


class TextReader(Reader):
    name = "text"
    modality = "text"
    extensions = (".txt",)

    def can_read(self, path: Path) -> bool:
        path = Path(path)
        return path.is_dir() or path.suffix.lower() in (*TABLE_SUFFIXES, *JSONL_SUFFIXES)

    def scan(self, path: Any, **options: Any) -> Dataset:
        """Index a table or a folder. Options: ``text_column`` (default ``text``), ``label_column`` (default
        ``label``; when left at the default and absent, the data is unlabelled), ``delimiter`` (tables)."""
        path = Path(path).expanduser()
        if not path.exists():
            raise BadInputError(f"{path}: no such file or directory; check the input path")
        if path.is_dir():
            return self._scan_text_folder(path, options)
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES or suffix in JSONL_SUFFIXES:
            return self._scan_rows(path, options)
        raise BadInputError(
            f"{path}: unsupported text input {suffix or '(no suffix)'}; "
            "use .csv, .tsv, .jsonl, or a folder of .txt files"
        )

    def load(self, record: Record) -> str:
        return str(record.source)

    # -- tables -------------------------------------------------------------------------------------------------
    def _scan_rows(self, path: Path, options: dict[str, Any]) -> Dataset:
        text_col = options.get("text_column") or DEFAULT_TEXT_COLUMN
        label_given = options.get("label_column")
        label_col = label_given or DEFAULT_LABEL_COLUMN
        text = read_text_file(path)
        if path.suffix.lower() in JSONL_SUFFIXES:
            rows, skipped = jsonl_rows(path, text)
            columns = _columns(rows)
        else:
            delimiter = options.get("delimiter") or TABLE_SUFFIXES[path.suffix.lower()]
            columns, rows, skipped = csv_rows(path, text, delimiter)
        if not columns:
            detail = f" ({len(skipped)} unreadable rows, first {skipped[0].id}: {skipped[0].reason})" if skipped else ""
            raise BadInputError(f"{path}: no rows{detail}; expected a header or JSON objects with a {text_col!r} field")
        if text_col not in columns:
            raise BadInputError(
                f"{path}: no column {text_col!r}; columns are {', '.join(columns)} (set {{param}})", param="text_column"
            )
        if not rows:
            raise BadInputError(f"{path}: no data rows under the header; add rows")
        has_labels = label_col in columns
        if label_given and not has_labels:
            raise BadInputError(
                f"{path}: no column {label_col!r}; columns are {', '.join(columns)} (set {{param}})",
                param="label_column",
            )
        records: list[Record] = []
        raw_labels: list[str | None] = []
        for line, row in rows:
            rid = f"{path.name}:{line}"
            value = row.get(text_col)
            body = "" if value is None else str(value)
            if not body.strip():
                skipped.append(Skipped(rid, f"empty {text_col!r}"))
                continue
            if not _encodable(body):
                skipped.append(Skipped(rid, f"{text_col!r} holds a lone surrogate escape (\\udXXX), not text"))
                continue
            label = row.get(label_col) if has_labels else None
            label = None if label is None or str(label).strip() == "" else str(label).strip()
            records.append(Record(rid, body, UNLABELLED, len(body), _stamp(body, label)))
            raw_labels.append(label)
        if not records:
            raise BadInputError(f"{path}: every row has an empty {text_col!r}; nothing to read")
        classes = _sorted_labels({lab for lab in raw_labels if lab is not None})
        index = {name: i for i, name in enumerate(classes)}
        records = [
            Record(r.id, r.source, index[lab] if lab is not None else UNLABELLED, r.length, r.stamp)
            for r, lab in zip(records, raw_labels, strict=True)
        ]
        return Dataset(path, self.name, self.modality, records, classes, skipped, _jsonable(options))

    # -- folders ------------------------------------------------------------------------------------------------
    def _scan_text_folder(self, root: Path, options: dict[str, Any]) -> Dataset:
        found = self._scan_folder(root, options)  # class layout, errors for empty classes, relative ids
        records: list[Record] = []
        skipped: list[Skipped] = list(found.skipped)
        for r in found.records:
            try:
                raw = Path(r.source).read_bytes()
            except OSError as exc:
                skipped.append(Skipped(r.id, os_error_reason(exc)))
                continue
            try:
                body = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                skipped.append(Skipped(r.id, utf8_problem(raw, exc) + "; re-save the file as UTF-8"))
                continue
            if not body.strip():
                skipped.append(Skipped(r.id, "empty file"))
                continue
            records.append(Record(r.id, body, r.label, len(body), _stamp(body, str(r.label))))
        if not records:
            first = f" (first {skipped[0].id}: {skipped[0].reason})" if skipped else ""
            raise BadInputError(f"{root}: every .txt file is empty or unreadable{first}; nothing to read")
        found.records, found.skipped = records, skipped
        return found


def _columns(rows: list[tuple[int, dict[str, Any]]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, row in rows:
        for k in row:
            seen.setdefault(str(k), None)
    return list(seen)


def _sorted_labels(labels: set[str]) -> list[str]:
    """Class names in a stable order: numerically when every label is an integer (so 10 follows 9)."""
    try:
        return sorted(labels, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(labels)


def _stamp(body: str, label: str | None) -> str:
    return hashlib.sha1(f"{label}\0{body}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _encodable(body: str) -> bool:
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
