"""Parquet tables (pyarrow), local or at any fsspec URL: one file, a folder of ``.parquet`` files, or a glob.

One row is one item, with id ``FILE:ROW`` (the file relative to the folder the files share, the row counted from 0
in that file). Options (reader options, ``-O KEY=VALUE`` on the CLI):

- ``image_column`` (default ``image``) / ``audio_column`` (default ``audio``): a binary column of encoded files, a
  string column of paths or URLs (relative to the table's folder), or a struct with ``bytes`` and ``path`` fields
  (the Hugging Face ``Image``/``Audio`` layout);
- ``text_column`` (default ``text``): a string column;
- ``label_column`` (default ``label`` when the table has one): class names or integers.

Listing reads the footer and the label column (and, for text, the text column for lengths and stamps), never the
image or audio bytes. :meth:`ParquetReader.load` reads the item's **row group** once per thread and keeps it while
the following rows of that group are read, so extraction reads the data by row group. A remote file is read from a
local copy (:func:`tlkit.data.remote.local_copy`), made by the first worker or thread that needs it while the others
wait: every DataLoader worker reads row groups of its own batches, and over the network each would fetch the groups
(and the read-ahead around them) again. A null or undecodable cell
is a named skip; a missing or unreachable file is an error naming it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from tlkit.data.base import Dataset, Record, Skipped
from tlkit.data.remote import (
    OpenFiles,
    PerThread,
    common_base,
    copies_folder,
    copy_ticket,
    file_info,
    file_stamp,
    filesystem,
    is_url,
    list_files,
    local_copy,
    unreachable,
)
from tlkit.data.streams import Entry, StreamReader, label_text, option, text_row
from tlkit.errors import BadInputError, BadItemError

PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_LABEL = "label"
#: Row groups kept in memory per thread of each process (a worker reads the rows of one group, then of the next).
KEEP_GROUPS = 2


class ParquetReader(StreamReader):
    format = "parquet"
    needs = ("pyarrow.parquet", "parquet")

    def __init__(self, modality: str = "image") -> None:
        super().__init__(modality)
        self._files = OpenFiles()
        self._groups: PerThread[OrderedDict[tuple[str, int, str], list[Any]]] = PerThread(OrderedDict)

    def recognises(self, location: str) -> bool:
        low = location.lower().rstrip("/")
        if low.endswith(PARQUET_SUFFIXES):
            return True
        if is_url(location) or any(c in location for c in "{*?["):
            return False
        from pathlib import Path

        p = Path(location).expanduser()
        try:
            return p.is_dir() and any(c.suffix.lower() in PARQUET_SUFFIXES for c in p.iterdir())
        except OSError:
            return False

    def column(self, options: dict[str, Any]) -> str:
        return option(options, f"{self.modality}_column", default=self.modality) or self.modality

    def scan_location(self, location: str, options: dict[str, Any]) -> Dataset:
        pq = self.library()
        files = list_files(location, PARQUET_SUFFIXES)
        base = common_base(files) if len(files) > 1 else files[0][: files[0].rfind("/") + 1]
        column = self.column(options)
        label_given = option(options, "label_column")
        copies = copies_folder(files[0])
        skipped: list[Skipped] = []

        def entries() -> Iterator[Entry]:  # file by file, row group by row group
            for path in files:
                yield from self._file_entries(pq, path, path[len(base) :], column, label_given, skipped, copies)

        return self.dataset(location, entries(), skipped, options)

    def _file_entries(
        self,
        pq: Any,
        path: str,
        rel: str,
        column: str,
        label_given: str | None,
        skipped: list[Skipped],
        copies: str | None = None,
    ) -> Iterator[Entry]:
        info = file_info(path)
        stamp, ticket = file_stamp(info), copy_ticket(copies, info)
        # Text is listed from its text column, the bulk of the file: copied now, so the items are read from the copy.
        copy = local_copy(path, ticket) if self.modality == "text" else None
        fs, inner = filesystem(copy or path)
        remote = ticket is not None and copy is None
        try:  # remote: exact range reads (the footer, the label column), not read-ahead blocks of the image bytes
            with fs.open(inner, "rb", **({"cache_type": "none"} if remote else {})) as fh:
                pf = pq.ParquetFile(fh)
                names = list(pf.schema_arrow.names)
                if column not in names:
                    raise BadInputError(f"{path}: no column {column!r}; columns are {', '.join(names)} (set "
                                        f"{{param}})", param=f"{self.modality}_column")  # fmt: skip
                label = label_given or (DEFAULT_LABEL if DEFAULT_LABEL in names else None)
                if label is not None and label not in names:
                    raise BadInputError(f"{path}: no column {label!r}; columns are {', '.join(names)} (set "
                                        f"{{param}})", param="label_column")  # fmt: skip
                yield from self._scan_file(pf, path, rel, column, label, stamp, skipped, ticket)
        except BadInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged footer or a transport error names the file
            if isinstance(exc, OSError | ConnectionError) or "://" in path:
                raise unreachable(path, exc) from exc
            raise BadInputError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); check "
                                f"it") from exc  # fmt: skip

    def _scan_file(
        self,
        pf: Any,
        path: str,
        rel: str,
        column: str,
        label: str | None,
        stamp: str,
        skipped: list[Skipped],
        ticket: str | None = None,
    ) -> Iterator[Entry]:
        """The file's entries; each source is ``(file, row group, row, column, copy ticket or None)``."""
        row = 0
        text = self.modality == "text"
        wanted = [c for c in (label, column if text else None) if c]
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            cols = pf.read_row_group(g, columns=wanted).to_pydict() if wanted else {}
            labels = cols.get(label) if label else None
            bodies = cols.get(column) if text else None
            for r in range(n):
                rid = f"{rel}:{row + r}"
                raw = label_text(labels[r]) if labels is not None else None
                length, item_stamp = None, f"{stamp}:{raw}"
                if bodies is not None:
                    text_stamp = text_row(rid, raw, bodies[r], column, skipped)
                    if text_stamp is None:
                        continue
                    length, item_stamp = text_stamp
                yield rid, (path, g, r, column, ticket), raw, length, item_stamp
            row += n

    def read(self, record: Record) -> Any:
        path, group, row, column, *rest = record.source
        cells = self._group(path, int(group), column, record.id, rest[0] if rest else None)
        cell = cells[int(row)]
        if self.modality == "text" or cell is None:
            return cell
        if isinstance(cell, dict):  # the Hugging Face Image/Audio struct: bytes, else a path
            if cell.get("bytes") is not None:
                return bytes(cell["bytes"])
            cell = cell.get("path")
            if cell is None:
                return None
        if isinstance(cell, bytes | bytearray | memoryview):
            return bytes(cell)
        return self._read_path(path, str(cell), record.id)

    def _group(self, path: str, group: int, column: str, item_id: str, ticket: str | None = None) -> list[Any]:
        groups = self._groups.get()  # this thread's: threads never evict each other's groups
        key = (path, group, column)
        cached = groups.get(key)
        if cached is not None:
            groups.move_to_end(key)
            return cached
        pq = self.library()
        try:
            source = local_copy(path, ticket) or path
            table = pq.ParquetFile(self._files.get(source)).read_row_group(group, columns=[column])
        except FileNotFoundError as exc:
            raise BadItemError(item_id, f"{path} is gone (file not found)") from exc
        except Exception as exc:  # noqa: BLE001 - a damaged row group is a skip for its rows
            raise BadItemError(item_id, f"row group {group} of {path} cannot be read ({type(exc).__name__}: "
                                        f"{exc})") from exc  # fmt: skip
        cells: list[Any] = table.column(0).to_pylist()
        if len(groups) >= KEEP_GROUPS:
            groups.popitem(last=False)
        groups[key] = cells
        return cells

    def _read_path(self, table: str, cell: str, item_id: str) -> bytes:
        """A path cell: absolute, a URL, or relative to the table's folder."""
        target = cell if is_url(cell) or cell.startswith("/") else table[: table.rfind("/") + 1] + cell
        fs, inner = filesystem(target)
        try:
            with fs.open(inner, "rb") as fh:
                data: bytes = fh.read()
        except FileNotFoundError as exc:
            raise BadItemError(item_id, f"file not found ({cell})") from exc
        except OSError as exc:
            raise BadItemError(item_id, f"I/O error reading {cell} ({exc})") from exc
        return data


__all__ = ["PARQUET_SUFFIXES", "ParquetReader"]
