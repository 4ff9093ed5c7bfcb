"""On-disk memos: what tlkit learns from installed libraries once, kept as JSON in the user's cache folder.

Listing, describing and rejecting backbone names must not import model libraries (timm and torchvision take seconds
to import). What a plugin needs from them (timm's model names, say) is built once per installed library and kept
here, keyed by what it depends on, so that later commands read a small JSON file instead.

The rule that keeps a memo trustworthy: **every input is in its key, and a key is checked in full on every read.**

- a library is keyed by its installed version and the size and modification time of its top-level module
  (``__init__.py``): installing, upgrading or reinstalling it changes them (:func:`library_stamp`);
- tlkit's and a plugin's own code by the sizes and modification times of the modules of its packages
  (:func:`code_stamp`), so editing a plugin (an editable install) is noticed too;
- a local file or folder by the size, modification and change times and inode of every file in it
  (:func:`path_stamp`): the quick check of ``make`` and ``rsync``, plus the change time, which no tool sets back.

A memo whose key differs, or a file that does not parse, is ignored and rebuilt. Writing is atomic and best
effort: a read-only or missing cache folder only makes tlkit slower. Files are data (JSON), never code.

Where: ``$TLKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/tlkit``, else ``~/.cache/tlkit``. ``TLKIT_CACHE_DIR=`` (empty)
turns the memos off. Deleting the folder is always safe.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tlkit.canonical import canonical_json

ENV_VAR = "TLKIT_CACHE_DIR"
FORMAT = "tlkit-memo"
VERSION = 1


def cache_dir() -> Path | None:
    """The folder tlkit keeps its memos in, or ``None`` when ``TLKIT_CACHE_DIR`` is set empty (memos off)."""
    raw = os.environ.get(ENV_VAR)
    if raw is not None:
        return Path(raw).expanduser() if raw.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tlkit"


def _stat(path: str | os.PathLike[str]) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def library_stamp(module: str) -> str | None:
    """``version:size:mtime`` of an installed library (by import name), found without importing it; ``None`` when
    it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    try:
        version = md.version(module)
    except md.PackageNotFoundError:
        version = "?"
    stat = _stat(spec.origin) or [0, 0]
    return f"{version}:{stat[0]}:{stat[1]}"


@functools.cache
def _package_files(package_dir: str) -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in Path(package_dir).glob("*.py")))


def code_stamp(modules: Iterable[str]) -> dict[str, Any]:
    """The sizes and modification times of the ``.py`` files of the packages that hold ``modules`` (each module's
    own package folder, not its subpackages)."""
    out: dict[str, Any] = {}
    for name in sorted(set(modules)):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if not file:
            out[name] = None
            continue
        folder = os.path.dirname(file)
        out[name] = {os.path.basename(f): _stat(f) for f in _package_files(folder)}
    return out


def path_stamp(path: str | os.PathLike[str]) -> list[Any]:
    """What identifies a local file or folder without reading it: per file its name, size, modification and change
    times and inode (``["missing"]`` when it does not exist)."""
    root = Path(path).expanduser()
    try:
        root = root.resolve()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        out: list[Any] = [str(root)]
        for f in files:
            st = f.stat()
            out.append([str(f.relative_to(root)) if f != root else "", st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                        st.st_ino])  # fmt: skip
    except OSError:
        return ["missing", str(root)]
    return out


def memo_path(kind: str, key: Mapping[str, Any]) -> Path | None:
    """Where the memo of ``kind`` (``names``, ``descriptions``) for ``key`` lives; ``None`` with memos off."""
    root = cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(canonical_json(key).encode()).hexdigest()[:32]
    return root / kind / f"{digest}.json"


def read_memo(kind: str, key: Mapping[str, Any]) -> Any | None:
    """The data stored for exactly ``key``, or ``None`` (no memo, another key, an unreadable file)."""
    path = memo_path(kind, key)
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        return None
    if canonical_json(doc.get("key")) != canonical_json(key):
        return None
    return doc.get("data")


def write_memo(kind: str, key: Mapping[str, Any], data: Any) -> None:
    """Store ``data`` for ``key`` (atomically; silently not at all when the folder cannot be written)."""
    path = memo_path(kind, key)
    if path is None:
        return
    from tlkit.fileio import atomic_write

    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, "key": key, "data": data}, sort_keys=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as fh:
            fh.write(text)
    except (OSError, TypeError, ValueError):
        pass


def library_index(library: str, build: Callable[[], Any], *, schema: int = 1) -> Any:
    """What ``build()`` derives from the installed ``library`` (its model names, say), built once per installed
    version of it and kept as JSON, so that later processes need not import the library.

    ``build`` imports the library and returns JSON data; ``schema`` is the version of that data's layout (raise it
    when ``build`` changes). A library that is not installed is not memoised: ``build()`` is called, and its
    ``ImportError`` is the plugin's to report.
    """
    stamp = library_stamp(library)
    if stamp is None:
        return build()
    key = {"library": library, "stamp": stamp, "schema": schema, "builder": f"{build.__module__}.{build.__qualname__}"}
    data = read_memo("names", key)
    if data is None:
        data = json.loads(canonical_json(build()))  # what a later read gives: plain JSON types
        write_memo("names", key, data)
    return data


__all__ = [
    "cache_dir",
    "code_stamp",
    "library_index",
    "library_stamp",
    "memo_path",
    "path_stamp",
    "read_memo",
    "write_memo",
]
