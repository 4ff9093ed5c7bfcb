"""Reading CSV, TSV and JSONL files (manifests and text tables) with every problem tied to a line number.

A file-level problem (not UTF-8, a malformed header, a quote that is never closed) is a one-line
:class:`BadInputError` naming ``file:line``; a row-level one (too many fields, a JSONL line that is not an object)
is a :class:`Skipped` record whose id is ``file:line``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from tlkit.data.listing import Skipped, os_error_reason
from tlkit.errors import BadInputError

Rows = list[tuple[int, dict[str, Any]]]


def read_text_file(path: Path) -> str:
    """The file's text (UTF-8, an optional BOM stripped); a one-line error naming the line of the first bad byte,
    or the reason the file cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read the file: {os_error_reason(exc)}") from exc
    return decode_text(path, raw)


def decode_text(path: Path | str, raw: bytes) -> str:
    """A file's bytes as text (UTF-8, an optional BOM stripped); a one-line error naming the line of the first bad
    byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: {utf8_problem(raw, exc)}; re-save the file as UTF-8") from exc


def utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    line = raw[: exc.start].count(b"\n") + 1
    return f"line {line} is not valid UTF-8 ({exc.reason} at byte {exc.start})"


def csv_rows(path: Path | str, text: str, delimiter: str) -> tuple[list[str], Rows, list[Skipped]]:
    """The header and ``(start line, row)`` pairs of a CSV/TSV; quoted fields may span lines; blank lines are not
    rows. Rows with more fields than the header are skip records; a quote left open to the end of the file (which
    would swallow every later line into one field) is an error naming the line where it opens."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [], []
    except csv.Error as exc:
        raise BadInputError(f"{path}:1: malformed header ({exc}); check the quoting") from exc
    last = (1, reader.line_num > 1)  # where the latest row starts, and whether it spans lines
    rows: Rows = []
    skipped: list[Skipped] = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise BadInputError(f"{path}:{start}: malformed row ({exc}); check the quoting") from exc
        last = (start, reader.line_num > start)
        if len(cells) > len(header):
            name = os.path.basename(str(path))
            skipped.append(Skipped(f"{name}:{start}", f"{len(cells)} fields but the header has {len(header)}"))
        elif cells:
            rows.append((start, dict(zip(header, cells, strict=False))))
        start = reader.line_num + 1
    if last[1]:  # a row that spans lines is legal inside quotes, unless its quote runs to the end of the file
        _check_closed(path, text, last[0], delimiter)
    return header, rows, skipped


def _check_closed(path: Path | str, text: str, start: int, delimiter: str) -> None:
    """Raise when the row starting at line ``start`` runs to the end of the file inside an open quote."""
    lines = io.StringIO(text, newline="").readlines()
    one = csv.reader(io.StringIO("".join(lines[start - 1 :]), newline=""), delimiter=delimiter, strict=True)
    try:
        next(one)
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise BadInputError(
                f"{path}:{start}: a quote opened on this line is never closed, so every later line would be read "
                f'as part of one field; close or escape the quote ("" inside a quoted field)'
            ) from None
    except StopIteration:
        pass


def jsonl_rows(path: Path, text: str) -> tuple[Rows, list[Skipped]]:
    """``(line, object)`` pairs of a JSONL file; lines that are not JSON objects are skip records."""
    rows: Rows = []
    skipped: list[Skipped] = []
    for line, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
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


__all__ = ["Rows", "csv_rows", "decode_text", "jsonl_rows", "read_text_file", "utf8_problem"]
