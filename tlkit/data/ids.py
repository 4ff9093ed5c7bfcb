"""Item ids as text and bytes, and cells that are safe to open in a spreadsheet.

An id made from a file name is the name as Python reads it (:func:`os.fsdecode`): bytes that are not valid UTF-8
become lone surrogates (``\\udcff``), so ``os.fsencode(id)`` gives the original bytes back. Where an id leaves
tlkit it is written so that the output stays valid UTF-8:

- the HDF5 cache stores :func:`id_bytes` (the original bytes) and reads them back with ``surrogateescape``;
- JSON escapes the surrogates (``"\\udcff"``), which ``json.loads`` turns back into the same id;
- CSV and terminal output show :func:`display_id`: each byte that is not UTF-8 as ``\\xNN``.
"""

from __future__ import annotations

#: Characters that make a spreadsheet treat a cell as a formula (OWASP's CSV-injection list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def id_bytes(item_id: str) -> bytes:
    """The bytes an id stands for: UTF-8, with surrogate-escaped bytes (from non-UTF-8 file names) restored."""
    return item_id.encode("utf-8", "surrogateescape")


def id_from_bytes(raw: bytes) -> str:
    """The inverse of :func:`id_bytes`."""
    return raw.decode("utf-8", "surrogateescape")


def display_id(item_id: str) -> str:
    """A valid UTF-8 rendering of an id: bytes of a non-UTF-8 file name appear as ``\\xNN``."""
    return id_bytes(item_id).decode("utf-8", "backslashreplace")


def csv_cell(value: str) -> str:
    """A text cell for a CSV file: valid UTF-8 (:func:`display_id`), and prefixed with ``'`` when it starts with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, so a spreadsheet shows it as text, not a formula."""
    text = display_id(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


__all__ = ["FORMULA_PREFIXES", "csv_cell", "display_id", "id_bytes", "id_from_bytes"]
