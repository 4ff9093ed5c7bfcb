"""The reader contract: a path becomes records (stable id, source, label), class names and a skip list.

Readers scan cheaply (no decoding) and decode one item at a time in :meth:`Reader.load`, which raises
:class:`tlkit.errors.BadItemError` for a bad file or row. The extraction engine applies ``on_error``:
``skip`` records the reason and carries on, ``fail`` stops with the item's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.data.listing import Skipped as Skipped  # re-exported: readers and the engine import it from here
from tlkit.data.listing import check_not_splits, os_error_reason, walk
from tlkit.data.records import Record as Record  # re-exported: defined with the table that holds records
from tlkit.data.records import RecordTable, fingerprint_lines, take
from tlkit.data.remote import is_url
from tlkit.data.tables import Rows, csv_rows, decode_text, read_text_file
from tlkit.data.urls import RemoteFile, file_stamp_of, join, list_folder, local_path, read_text
from tlkit.errors import BadInputError, BadItemError

UNLABELLED = -1
ON_ERROR_CHOICES = ("skip", "fail")


@dataclass
class Dataset:
    """What a reader found under a path."""

    root: Path | str  # a URL or a pattern (``shards/{0..9}.tar``) stays a string
    reader: str
    modality: str
    records: Sequence[Record]  # a list, or a RecordTable (tlkit.data.records) for large listings
    class_names: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        if isinstance(self.records, RecordTable):
            return bool((self.records.labels != UNLABELLED).any())
        return any(r.label != UNLABELLED for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> str:
        """A hash of ids, labels, class names and item stamps: it changes when the data changes."""
        h = hashlib.sha256()
        h.update(json.dumps({"classes": self.class_names, "reader": self.reader}, sort_keys=True).encode())
        for lines in fingerprint_lines(self.records):
            h.update(lines)
        return h.hexdigest()[:32]

    def subset(self, indices: Sequence[int]) -> Dataset:
        return Dataset(
            self.root,
            self.reader,
            self.modality,
            take(self.records, indices),
            list(self.class_names),
            list(self.skipped),
            dict(self.options),
        )


class Reader(ABC):
    """Base class for readers. ``extensions`` lists the file suffixes a folder scan picks up."""

    name: str = ""
    modality: str = "image"
    extensions: tuple[str, ...] = ()
    #: Whether :meth:`load` returns :func:`tlkit.data.image.decode_image`'s result unchanged, so that extraction may
    #: ask it for ``uint8`` pixels (:func:`tlkit.data.image.pixel_decoding`) instead of a PIL image.
    returns_decoded_images: bool = False
    #: The most processes a listing may use (1: this one only). :func:`tlkit.host.readers.open_dataset` sets it to the
    #: cores this process may use; readers that list in parallel (WebDataset shards) read it.
    max_listing_processes: int = 1

    def can_read(self, path: Path) -> bool:
        """Whether this reader understands ``path`` (used to pick a reader for a modality). A URL is taken as a
        folder or a manifest (:mod:`tlkit.data.urls`); stream readers, asked first, take the URLs of their formats."""
        if isinstance(path, str) and is_url(path):
            return True
        path = Path(path)
        if path.is_dir():
            return True
        return path.suffix.lower() == ".csv"

    def scan(self, path: str | os.PathLike[str], **options: Any) -> Dataset:
        """Index ``path`` without decoding items. The default handles the file-based layouts: a folder with
        one subfolder per class, a flat folder (unlabelled), or a manifest CSV with ``path,label``; each may be a
        local path or an fsspec URL (:mod:`tlkit.data.urls`)."""
        if isinstance(path, str) and is_url(path):
            local = local_path(path)
            if local is None:
                return self._scan_url(path, options)
            path = local
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
    def _is_item_name(self, name: str) -> bool:
        return not name.startswith(".") and Path(name).suffix.lower() in self.extensions

    def _is_item(self, p: Path) -> bool:
        return p.is_file() and self._is_item_name(p.name)

    def _record(self, root: Path, p: Path, label: int, stamp: str | None = None, item_id: str | None = None) -> Record:
        if stamp is None:
            try:
                st = p.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = ""
        rid = item_id if item_id is not None else p.relative_to(root).as_posix()
        return Record(id=rid, source=str(p), label=label, length=self._length(p), stamp=stamp)

    def _length(self, p: Path) -> int | None:
        return None

    def _scan_folder(self, root: Path, options: dict[str, Any]) -> Dataset:
        """Class folders (each non-hidden sub-folder that holds items is a class; files beside them are skip
        records) or, when no sub-folder holds items, a flat unlabelled folder. See :mod:`tlkit.data.listing`."""
        top = walk(root, root, self._is_item_name, top=True)
        if top.skipped and top.skipped[0].id == "./":
            raise BadInputError(f"{root}: {top.skipped[0].reason}")
        found = [(name, walk(root, d, self._is_item_name)) for name, d in top.folders]
        return self._folder_dataset(
            root, top.files, top.skipped, [(name, listing.files, listing.skipped) for name, listing in found],
            options, lambda f, label: self._record(root, f.path, label, f.stamp),
        )  # fmt: skip

    def _scan_url(self, url: str, options: dict[str, Any]) -> Dataset:
        """A folder or a manifest at an fsspec URL: listed (or read) through fsspec, items read as bytes."""
        if url.lower().rstrip("/").endswith((".csv", ".tsv", ".tab")):
            return self._scan_manifest(url, options)
        top, folders = list_folder(url)

        def items(files: list[RemoteFile]) -> list[RemoteFile]:
            return [f for f in files if self._is_item_name(f.id.rsplit("/", 1)[-1])]

        found: list[tuple[str, list[RemoteFile], list[Skipped]]] = [(n, items(f), []) for n, f in folders]
        return self._folder_dataset(url, items(top), [], found, options,
                                    lambda f, label: Record(f.id, f.url, label, None, f.stamp))  # fmt: skip

    def _folder_dataset(
        self,
        root: Path | str,
        top_files: Sequence[Any],
        top_skipped: Sequence[Skipped],
        found: Sequence[tuple[str, Sequence[Any], Sequence[Skipped]]],
        options: dict[str, Any],
        make: Callable[[Any, int], Record],
    ) -> Dataset:
        """The layout rules of a folder, local or at a URL: ``top_files`` are the files beside the sub-folders,
        ``found`` each first-level sub-folder's files (with the skips met listing it); ``make`` turns a file and
        a label into a record."""
        exts = ", ".join(self.extensions)
        skipped = list(top_skipped)
        if not any(files for _, files, _ in found):
            for _, _, skips in found:
                skipped += skips
            if not top_files:
                why = f" ({len(skipped)} skipped, first {skipped[0].id}: {skipped[0].reason})" if skipped else ""
                raise BadInputError(
                    f"{root}: no {self.modality} files found ({exts}){why}; check the path and extensions"
                )
            flat = [make(f, UNLABELLED) for f in top_files]
            return Dataset(root, self.name, self.modality, flat, [], skipped, _jsonable(options))
        empty = [name for name, files, skips in found if not files and not skips]
        if empty:
            raise BadInputError(
                f"{root}: class folder(s) {', '.join(empty)} contain no {self.modality} files ({exts}); "
                f"add files or remove the folder(s)"
            )
        folder = os.path.basename(str(root).rstrip("/"))
        skipped += [
            Skipped(make(f, UNLABELLED).id, f"outside the class folders (the sub-folders of {folder} are the "
                    "classes); move it into a class folder")
            for f in top_files
        ]  # fmt: skip
        classes: list[str] = []
        records = []
        for name, files, skips in found:
            skipped += skips
            if files:
                records += [make(f, len(classes)) for f in files]
                classes.append(name)
        check_not_splits(root, classes, options)  # data/ holding train/ and test/: the splits are not the labels
        if len(classes) == 1 and not options.get("allow_single_class"):
            raise BadInputError(
                f"{root}: only one class folder ({classes[0]}); a classifier needs at least two, or pass "
                f"the flat folder of files for unlabelled extraction"
            )
        return Dataset(root, self.name, self.modality, records, classes, skipped, _jsonable(options))

    def _scan_manifest(self, manifest: Path | str, options: dict[str, Any]) -> Dataset:
        """A ``path[,label]`` CSV, local or at a URL. Relative paths are relative to the manifest's folder (or
        URL); absolute paths and URLs are used as they are. A path listed twice is a skip record (same label) or an
        error naming both lines."""
        path_col = options.get("path_column", "path")
        label_col = options.get("label_column", "label")
        columns, rows, skipped = read_rows(manifest)
        if not rows:
            raise BadInputError(f"{manifest}: the manifest has no rows")
        if path_col not in columns:
            raise BadInputError(
                f"{manifest}: no column {path_col!r}; columns are {', '.join(columns)} (set {{param}})",
                param="path_column",
            )
        has_labels = label_col in columns
        labels = sorted({r[label_col] for _, r in rows if r.get(label_col)}) if has_labels else []
        index = {name: i for i, name in enumerate(labels)}
        remote = isinstance(manifest, str)
        base = manifest.parent if isinstance(manifest, Path) else manifest[: manifest.rfind("/") + 1]
        name = os.path.basename(str(manifest))
        records = []
        first: dict[str, tuple[int, int]] = {}  # normalised path -> (line, label) of its first listing
        for line, row in rows:
            rel = (row.get(path_col) or "").strip()
            if not rel:
                skipped.append(Skipped(f"{name}:{line}", "empty path"))
                continue
            label = index[row[label_col]] if has_labels and row.get(label_col) else UNLABELLED
            local = local_path(rel) if is_url(rel) else Path(rel).expanduser()
            url = None
            if local is None or (remote and not local.is_absolute()):
                url = join(str(base), rel)  # a URL, or a path relative to the manifest's URL
            elif not local.is_absolute() and isinstance(base, Path):
                local = base / local
            where = url if url is not None else os.path.normpath(str(local))
            if where in first:
                line0, label0 = first[where]
                if label0 != label:
                    raise BadInputError(
                        f"{manifest}:{line}: {rel} is listed again with another label (first at line {line0}); "
                        "keep one line per item"
                    )
                skipped.append(Skipped(f"{name}:{line}", f"duplicate of line {line0} ({rel}); left out"))
                continue
            first[where] = (line, label)
            if url is not None:
                records.append(Record(rel, url, label, None, file_stamp_of(url)))
            else:
                records.append(self._record(Path(str(local)).parent, Path(str(local)), label, item_id=rel))
        return Dataset(manifest, self.name, self.modality, records, labels, skipped, _jsonable(options))


def read_rows(path: Path | str) -> tuple[list[str], Rows, list[Skipped]]:
    """Header, ``(line, row)`` pairs and skip records of a CSV/TSV file (a local path or a URL); problems name the
    line."""
    delimiter = "\t" if str(path).lower().endswith((".tsv", ".tab")) else ","
    if isinstance(path, str) and is_url(path):
        local = local_path(path)
        text = read_text_file(local) if local is not None else decode_text(path, read_text(path))
    else:
        text = read_text_file(Path(path))
    return csv_rows(path, text, delimiter)


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
    except OSError as exc:  # a reader that lets the file system's error through
        return None, os_error_reason(exc)
    except Exception as exc:  # any decoder failure is a bad item, reported with its type
        return None, f"{type(exc).__name__}: {exc}"


def iter_ids(records: Iterable[Record]) -> list[str]:
    return [r.id for r in records]
