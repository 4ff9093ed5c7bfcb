"""Crash-safe file writing and the single-writer lock, shared by the feature cache and the run directories.

Two rules hold every file tlkit writes together:

- **A final name only ever holds a complete file.** Data goes to a temporary name beside the target, is flushed to
  disk, and is renamed over the target in one atomic step (:func:`atomic_write`, :func:`atomic_write_with`,
  :func:`publish`). A crash at any moment leaves the old file or the new one, plus at most a stray ``*.tmp``.
- **One writer at a time.** :func:`writer_lock` holds an OS file lock (``flock``); a second writer is refused with
  a one-line error, and the kernel drops the lock when its holder dies, even by ``kill -9``.

This module is low-level on purpose: it imports nothing from tlkit but :mod:`tlkit.errors`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tlkit.errors import TlkitError

__all__ = ["atomic_write", "atomic_write_with", "fsync_path", "publish", "writer_lock"]


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk; folders need it so that a rename survives a power cut.

    Best effort: a file system that cannot sync (or a folder that cannot be opened) is left as it is.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished file into place: after this, ``final`` is either the old file or the new one."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


def _temporary_beside(path: Path) -> Path:
    """A new, empty temporary file in ``path``'s folder (the rename must not cross file systems).

    Created like any new file (mode 0o666 less the umask), not 0o600 as :func:`tempfile.mkstemp` would: it becomes
    the user's file once renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[str], object]) -> None:
    """Let ``writer(tmp_path)`` write a file (for libraries that want a path), then fsync and rename it to ``path``."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        writer(str(tmp))
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def writer_lock(
    lock_file: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    noun: str,
    error: type[TlkitError] = TlkitError,
    timeout: float = 0.0,
) -> Iterator[None]:
    """Hold ``lock_file`` for the duration, so that only one process writes ``target`` (a ``noun``: "cache",
    "run directory").

    A second writer waits up to ``timeout`` seconds and then gets ``error``, one line that names ``target`` and the
    fix. The message names the ``output`` parameter (the CLI shows it as its flag). The lock is an OS file lock
    (``flock``), so the kernel drops it when the holder dies, even by ``kill -9``; the lock file itself stays.
    """
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise error(
            f"{target}: this {noun} is being written by another tlkit process (lock {lock_file.name} is held); "
            "wait for it to finish, or write to another {param}",
            param="output",
        ) from None
    try:
        yield
    finally:
        lock.release()
