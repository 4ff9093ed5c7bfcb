"""Class folders and manifests at fsspec URLs (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://``), for
the folder and manifest readers (:class:`tlkit.data.base.Reader`).

A ``file://`` URL is the local path it names (same ids, stamps and cache as the path). Any other URL is listed with
fsspec: a folder's files (recursively, hidden names left out), with the same layout rules as a local folder (the
first-level sub-folders are the classes), ids relative to the folder, and each file's stamp from the store (size and
ETag or modification time); a manifest is read through fsspec and its paths may be URLs, or paths relative to the
manifest's URL. An item is read as bytes when it is decoded. A URL that cannot be listed (an HTTP server without
folder listings, a missing bucket) is a one-line error that says what to give instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tlkit.data.listing import NOT_FOUND
from tlkit.data.remote import file_stamp, filesystem, is_url, unreachable
from tlkit.errors import BadInputError, BadItemError


@dataclass(frozen=True)
class RemoteFile:
    """A file found under a folder URL: its id (relative to the folder), its URL and its stamp."""

    id: str
    url: str
    stamp: str


def local_path(url: str) -> Path | None:
    """The local path a ``file://`` URL names, ``None`` for any other URL."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path)).expanduser()


def join(base: str, rel: str) -> str:
    """``rel`` (a URL, or a path relative to ``base``, a folder URL) as a URL."""
    if is_url(rel):
        return rel
    return base.rstrip("/") + "/" + rel.lstrip("/")


def list_folder(url: str) -> tuple[list[RemoteFile], list[tuple[str, list[RemoteFile]]]]:
    """The files directly in the folder at ``url`` and, for each first-level sub-folder (sorted), the files under
    it: ids relative to the folder, names starting with ``.`` left out at every depth. A URL that cannot be listed
    is a :class:`BadInputError` naming it and the way out."""
    fs, inner = filesystem(url)
    try:
        is_dir = bool(fs.isdir(inner))
        exists = is_dir or bool(fs.exists(inner))
    except Exception as exc:  # noqa: BLE001 - any transport error names the URL
        raise unreachable(url, exc) from exc
    if not is_dir:
        if exists:
            raise BadInputError(f"{url}: a file, not a folder; give a folder URL, or a manifest .csv of the files")
        raise BadInputError(
            f"{url}: cannot list this URL (it does not exist, or the server does not list folders); give a manifest "
            f".csv of the files' URLs, or WebDataset/Parquet shards by pattern"
        )
    try:
        found = fs.find(inner, detail=True)
    except Exception as exc:  # noqa: BLE001
        raise unreachable(url, exc) from exc
    prefix = inner.rstrip("/") + "/"
    top: list[RemoteFile] = []
    folders: dict[str, list[RemoteFile]] = {}
    for path in sorted(found):
        info = found[path]
        if info.get("type", "file") != "file" or not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        parts = rel.split("/")
        if any(p.startswith(".") or not p for p in parts):
            continue
        target = join(url, rel)
        # a listing without sizes (an HTTP index page) is completed by asking for each file's details
        item = RemoteFile(rel, target, file_stamp(info) if info.get("size") is not None else file_stamp_of(target))
        if len(parts) == 1:
            top.append(item)
        else:
            folders.setdefault(parts[0], []).append(item)
    return top, sorted(folders.items())


def file_stamp_of(url: str) -> str:
    """The stamp of one file at a URL, or ``""`` when it cannot be reached (reading it is then a named skip)."""
    fs, inner = filesystem(url)
    try:
        return file_stamp(fs.info(inner))
    except Exception:  # noqa: BLE001 - a missing item is a skip when it is read, as for a local manifest
        return ""


def read_text(url: str) -> bytes:
    """The bytes of a manifest at a URL; a missing or unreachable one is an error naming it."""
    fs, inner = filesystem(url)
    try:
        with fs.open(inner, "rb") as fh:
            data: bytes = fh.read()
    except Exception as exc:  # noqa: BLE001
        raise unreachable(url, exc) from exc
    return data


def read_item(source: Any, item_id: str) -> Any:
    """What a folder reader decodes for ``source``: the bytes of a URL (read through fsspec; a missing or unreadable
    file is a :class:`BadItemError`), or the local path as it is."""
    if not isinstance(source, str) or not is_url(source):
        return source
    path = local_path(source)
    if path is not None:
        return str(path)
    fs, inner = filesystem(source)
    try:
        with fs.open(inner, "rb") as fh:
            data: bytes = fh.read()
    except FileNotFoundError as exc:
        raise BadItemError(item_id, NOT_FOUND) from exc
    except Exception as exc:  # noqa: BLE001 - a transport error is this item's skip, retried on the next run
        raise BadItemError(item_id, f"I/O error reading {source} ({type(exc).__name__}: {exc})") from exc
    return data


__all__ = ["RemoteFile", "file_stamp_of", "join", "list_folder", "local_path", "read_item", "read_text"]
