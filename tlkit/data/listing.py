"""Walking a folder for items: every entry is an item, a named skip record, or ignored by a documented rule.

- Names starting with ``.`` (hidden files and folders, ``.ipynb_checkpoints/``) are ignored, at every depth.
- Symbolic links are followed; a broken link, a link loop or a link back to a folder above it is a skip record.
- A folder that cannot be listed, or an entry that cannot be examined (permission denied, I/O error), is a skip
  record (id = the relative path, ``/`` appended for a folder) instead of an exception.
- Class folders that all carry split names (``train``, ``test``, ``val``, ...) are refused: the folder is the parent
  of the splits (:func:`check_not_splits`).
- Ids are relative POSIX paths as Python reads names (:func:`os.fsdecode`): bytes that are not UTF-8 are
  surrogate-escaped, so ``os.fsencode(id)`` gives the name's bytes back (see :mod:`tlkit.data.ids`).

Skip reasons start with a fixed phrase. Those in :data:`TRANSIENT_REASONS` describe the file system, not the
content (permission denied, file not found, I/O error): such items are retried on every run, even when the file's
size and modification time have not changed (a ``chmod`` changes neither).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tlkit.errors import BadInputError

PERMISSION_DENIED = "permission denied"
NOT_FOUND = "file not found"
IO_ERROR = "I/O error"
#: Reasons (prefixes) that may go away without the item changing: retried on every run.
TRANSIENT_REASONS = (PERMISSION_DENIED, NOT_FOUND, IO_ERROR)


@dataclass(frozen=True)
class Skipped:
    """An item that is not a row: its id and the reason (which starts with a fixed phrase, see above)."""

    id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason}


def is_transient(reason: str) -> bool:
    """Whether a skip reason describes the file system rather than the content (so it is retried every run)."""
    return reason.startswith(TRANSIENT_REASONS)


def os_error_reason(exc: OSError, what: str = "file") -> str:
    """A skip reason for an ``OSError`` met while opening or reading an item."""
    if isinstance(exc, PermissionError):
        return f"{PERMISSION_DENIED} (unreadable {what}); fix its permissions and rerun"
    if isinstance(exc, FileNotFoundError):
        return NOT_FOUND
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.EIO:
        return f"{IO_ERROR} ({exc.strerror}); check the disk and rerun"
    return f"{IO_ERROR} ({type(exc).__name__}: {exc.strerror or exc})"


@dataclass
class Found:
    """An item file found by :func:`walk`: its path (as reached, links not resolved) and its ``stat``."""

    path: Path
    stat: os.stat_result

    @property
    def stamp(self) -> str:
        return f"{self.stat.st_size}:{self.stat.st_mtime_ns}"


@dataclass
class Listing:
    """What :func:`walk` found under one folder: item files in id order, and skip records."""

    files: list[Found] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    folders: list[tuple[str, Path]] = field(default_factory=list)  # top-level folders (only with ``top``)


def rel_id(root: Path, path: Path, folder: bool = False) -> str:
    rel = path.relative_to(root).as_posix()
    return rel + "/" if folder else rel


def walk(
    root: Path,
    folder: Path,
    is_item_name: Callable[[str], bool],
    *,
    recursive: bool = True,
    top: bool = False,
) -> Listing:
    """Items under ``folder`` (ids relative to ``root``), in the order of their sorted path components.

    With ``top``, sub-folders are not entered but listed in ``Listing.folders`` (the caller decides the layout).
    """
    out = Listing()
    try:
        ancestors = {_key(os.stat(folder)), _key(os.stat(root))}  # a link back to the root is a loop too
    except OSError as exc:
        out.skipped.append(Skipped(rel_id(root, folder, True), _folder_reason(exc)))
        return out
    _walk(root, folder, is_item_name, recursive, top, ancestors, out)
    return out


def _walk(
    root: Path,
    folder: Path,
    is_item_name: Callable[[str], bool],
    recursive: bool,
    top: bool,
    ancestors: set[tuple[int, int]],
    out: Listing,
) -> None:
    try:
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.path) for e in it)
    except OSError as exc:
        out.skipped.append(Skipped(rel_id(root, folder, True), _folder_reason(exc)))
        return
    for name, raw in entries:
        if name.startswith("."):
            continue  # hidden files and folders are ignored, as documented
        path = Path(raw)
        candidate = is_item_name(name) or "." not in name  # an item, or maybe a folder
        try:
            st = os.stat(path)  # follows symbolic links
        except OSError as exc:
            if candidate:
                out.skipped.append(Skipped(rel_id(root, path), _entry_reason(path, exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            if top:
                out.folders.append((name, path))
            elif recursive:
                key = _key(st)
                if key in ancestors:
                    out.skipped.append(
                        Skipped(rel_id(root, path, True), "symbolic link loop (leads back to a folder above it)")
                    )
                    continue
                _walk(root, path, is_item_name, recursive, top, ancestors | {key}, out)
        elif is_item_name(name):
            if stat.S_ISREG(st.st_mode):
                out.files.append(Found(path, st))
            else:
                out.skipped.append(Skipped(rel_id(root, path), "not a regular file (a pipe, socket or device)"))


#: Folder names that name a dataset split, not a class: a folder whose class folders all carry such names is the
#: parent of the splits (``data/`` holding ``train/`` and ``test/``), and is refused unless :data:`ALLOW_SPLIT_NAMES`.
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "dev"})
#: The reader option that reads folders named like splits as classes after all.
ALLOW_SPLIT_NAMES = "allow_split_names"


def check_not_splits(root: Path | str, classes: list[str], options: dict[str, object]) -> None:
    """Refuse class folders that all carry split names (``train``, ``test``, ``val``, ...): ``root`` is then the
    parent of the splits, and reading it would silently train on the split as the label. The reader option
    ``allow_split_names`` (true) reads them as classes after all."""
    if not classes or not all(c.lower() in SPLIT_NAMES for c in classes) or is_true(options.get(ALLOW_SPLIT_NAMES)):
        return
    first = next((c for c in classes if c.lower().startswith("train")), classes[0])
    others = [c for c in classes if c != first]

    def child(name: str) -> str:
        return str(root / name) if isinstance(root, Path) else root.rstrip("/") + "/" + name

    also = f" (and {', '.join(child(c) for c in others)} to evaluate, or as --val)" if others else ""
    raise BadInputError(
        f"{root}: its sub-folder(s) {', '.join(classes)} are dataset splits, not classes; point at one split, "
        f"{child(first)}, whose sub-folders are the classes{also}, or, if they really are your classes, pass the "
        f"reader option {ALLOW_SPLIT_NAMES}=true (--reader-option {ALLOW_SPLIT_NAMES}=true)"
    )


def is_true(value: object) -> bool:
    """A reader option's truth: ``True``, or a string such as ``true``, ``1``, ``yes``, ``on`` (from the CLI)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _entry_reason(path: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return f"broken symbolic link (to {os.readlink(path)}); fix or remove the link"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop; fix or remove the link"
    if isinstance(exc, PermissionError):
        return f"{PERMISSION_DENIED} (cannot examine the entry: its folder lacks execute permission); fix it and rerun"
    return os_error_reason(exc)


def _folder_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return f"{PERMISSION_DENIED} (cannot list the folder; its items are not read); fix its permissions and rerun"
    return os_error_reason(exc, "folder")


__all__ = [
    "ALLOW_SPLIT_NAMES",
    "IO_ERROR",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "SPLIT_NAMES",
    "TRANSIENT_REASONS",
    "Found",
    "Listing",
    "Skipped",
    "check_not_splits",
    "is_transient",
    "is_true",
    "os_error_reason",
    "rel_id",
    "walk",
]
