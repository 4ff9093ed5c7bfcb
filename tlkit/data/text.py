"""The text reader: CSV, TSV or JSONL tables with a text column and an optional label column, or a folder of
``.txt`` files with one subfolder per class.

Each record's ``source`` is the text itself and its ``length`` the number of characters (for length bucketing).
Table rows get ids ``file.csv:LINE`` (the line where the row starts); files get their relative path. Rows or files
with no text are recorded in ``Dataset.skipped``; a missing column or a file that is not UTF-8 is an error that
names the columns that exist, or the line at fault.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlkit.data.base import UNLABELLED, Dataset, Reader, Record, Skipped, _jsonable
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
        text = _read_utf8(path)
        if path.suffix.lower() in JSONL_SUFFIXES:
            rows, skipped = _jsonl_rows(path, text)
            columns = _columns(rows)
        else:
            delimiter = options.get("delimiter") or TABLE_SUFFIXES[path.suffix.lower()]
            columns, rows, skipped = _table_rows(path, text, delimiter)
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
        skipped: list[Skipped] = []
        for r in found.records:
            raw = Path(r.source).read_bytes()
            try:
                body = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                skipped.append(Skipped(r.id, _utf8_problem(raw, exc) + "; re-save the file as UTF-8"))
                continue
            if not body.strip():
                skipped.append(Skipped(r.id, "empty file"))
                continue
            records.append(Record(r.id, body, r.label, len(body), _stamp(body, str(r.label))))
        if not records:
            raise BadInputError(f"{root}: every .txt file is empty or unreadable; nothing to read")
        found.records, found.skipped = records, skipped
        return found


def _read_utf8(path: Path) -> str:
    """The file's text (UTF-8, an optional BOM stripped); an error naming the line of the first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: {_utf8_problem(raw, exc)}; re-save the file as UTF-8") from exc


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    line = raw[: exc.start].count(b"\n") + 1
    return f"line {line} is not valid UTF-8 ({exc.reason} at byte {exc.start})"


Rows = list[tuple[int, dict[str, Any]]]


def _table_rows(path: Path, text: str, delimiter: str) -> tuple[list[str], Rows, list[Skipped]]:
    """The header and ``(start line, row)`` pairs of a CSV/TSV; quoted fields may span lines; blank lines are not
    rows. Rows with more fields than the header are recorded as skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [], []
    except csv.Error as exc:
        raise BadInputError(f"{path}:1: malformed header ({exc})") from exc
    rows: list[tuple[int, dict[str, Any]]] = []
    skipped: list[Skipped] = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise BadInputError(f"{path}:{start}: malformed row ({exc}); check the quoting") from exc
        if len(cells) > len(header):
            skipped.append(Skipped(f"{path.name}:{start}", f"{len(cells)} fields but the header has {len(header)}"))
        elif cells:
            rows.append((start, dict(zip(header, cells, strict=False))))
        start = reader.line_num + 1
    return header, rows, skipped


def _jsonl_rows(path: Path, text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[Skipped]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    skipped: list[Skipped] = []
    for line, raw in _numbered_lines(text):
        if not raw.strip():
            continue
        rid = f"{path.name}:{line}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            skipped.append(Skipped(rid, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            skipped.append(Skipped(rid, f"a JSON {type(obj).__name__}, expected an object"))
            continue
        rows.append((line, obj))
    return rows, skipped


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    for i, line in enumerate(text.split("\n"), start=1):
        yield i, line.rstrip("\r")


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
    return hashlib.sha1(f"{label}\0{body}".encode()).hexdigest()[:16]
