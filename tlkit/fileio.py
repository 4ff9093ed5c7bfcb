"""Crash-safe file writing and the single-writer lock, shared by the feature cache and the run directories.

Two rules hold every file tlkit writes together:

- **A final name only ever holds a complete file.** Data goes to a temporary name beside the target, is flushed to
  disk, and is renamed over the target in one atomic step (:func:`atomic_write`, :func:`atomic_write_with`,
  :func:`publish`). A crash at any moment leaves the old file or the new one, plus at most a stray ``*.tmp``.
- **One writer at a time.** :func:`writer_lock` holds an OS file lock (``flock``); a second writer is refused with
  a one-line error, and the kernel drops the lock when its holder dies, even by ``kill -9``. A clean release
  deletes the lock file, so finished work leaves no lock files behind.

Files are created with the permissions of any new file (``0o666`` less the umask), whatever the library that fills
the temporary file does.

This module is low-level on purpose: it imports nothing from tlkit but :mod:`tlkit.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from tlkit.errors import TlkitError

__all__ = [
    "atomic_write",
    "atomic_write_with",
    "describe_holder",
    "fsync_path",
    "lock_holder",
    "output_file",
    "publish",
    "staging_folder",
    "writer_lock",
]


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


def output_file(
    path: str | os.PathLike[str], example: str, error: type[TlkitError] = TlkitError, param: str = "output"
) -> Path:
    """``path`` as the file an output parameter names, or one line when it is an existing folder: the one rule
    for every output that is a single file (a cache, an exported model). ``example`` is a file name for the hint
    (``features.h5``)."""
    path = Path(path)
    if path.is_dir():
        suffix = example[example.find(".") :] if "." in example else ""
        raise error(
            f"{path} is a folder; give {{{param}}} a file path ending {suffix}, such as {path / example}",
            param=param,
        )
    return path


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


@contextlib.contextmanager
def staging_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A new, private folder beside ``path`` (``.NAME.XXXX.tmp/``) for a file written together with companions
    (an ONNX model and its weights): write and check them there, then :func:`publish` each into place. The folder
    is removed on exit, with whatever is still in it, so a failure leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        break
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[str], object]) -> None:
    """Let ``writer(tmp_path)`` write a file (for libraries that want a path), then fsync and rename it to ``path``."""
    path = Path(path)
    tmp = _temporary_beside(path)
    mode = tmp.stat().st_mode & 0o777  # what a new file gets here
    try:
        writer(str(tmp))
        if tmp.stat().st_mode & 0o777 != mode:  # the writer replaced the file (safetensors writes it 0o600)
            os.chmod(tmp, mode)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: How long a writer asked not to wait (``timeout=0``) still retries: a reader's probe (:func:`lock_holder`) holds
#: a shared lock on the file for a few microseconds, and must not make a writer give up.
_GRACE = 0.2


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

    A second writer waits up to ``timeout`` seconds and then gets ``error``, one line that names ``target``, the
    process that holds it and the fix. The message names the ``output`` parameter (the CLI shows it as its flag).

    The lock is an OS file lock (``flock``): the kernel drops it when the holder dies, even by ``kill -9``, so a
    lock file left by a killed process never blocks the next writer. While held, the file records its holder (pid,
    host, start time: :func:`lock_holder`). A clean release deletes it, and the folders the lock had to create
    when they are left empty (a run that failed before writing anything leaves no trace).
    """
    lock_file = Path(lock_file)
    created = _make_parents(lock_file)
    try:
        with _held(lock_file, target, noun, error, timeout):
            yield
    finally:
        for folder in created:  # innermost first; a folder something else wrote into stays
            try:
                folder.rmdir()
            except OSError:
                break


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent folders; the ones created, innermost first."""
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def _held(lock_file: Path, target: object, noun: str, error: type[TlkitError], timeout: float) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): filelock's lock, which deletes its file on release there
        yield from _held_portable(lock_file, target, noun, error, timeout)
        return
    deadline = time.monotonic() + max(timeout, _GRACE)
    while True:
        fd = _open_lock(lock_file)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                with contextlib.suppress(OSError):
                    if lock_file.stat().st_size == 0:  # the empty file just created: nobody can hold it here
                        lock_file.unlink()
                raise error(
                    f"{target}: the file system of {lock_file.parent} cannot lock files (flock: {exc.strerror}), so "
                    "two tlkit processes could write it at once; write to a local disk ({param})",
                    param="output",
                ) from None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                raise _busy(lock_file, target, noun, error) from None
            time.sleep(0.02)
            continue
        if _is_current(fd, lock_file):
            break
        os.close(fd)  # the holder before us deleted this file as it released it: lock the one at the path now
    try:
        _write_holder(fd)
        yield
    finally:
        # Delete the file while still holding it, then let go: a process that opened it meanwhile finds, once it
        # gets the lock, that the path no longer names what it locked, and starts again (``_is_current``).
        with contextlib.suppress(OSError):
            os.unlink(lock_file)
        os.close(fd)


def _open_lock(lock_file: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(lock_file, flags, 0o666)
    except FileNotFoundError:  # another writer's failed run removed the (empty) folder it had created
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock_file, flags, 0o666)


def _is_current(fd: int, lock_file: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock_file, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _write_holder(fd: int) -> None:
    """Record who holds the lock, in the lock file itself (a courtesy to readers; the ``flock`` is what counts)."""
    note = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)


def _held_portable(
    lock_file: Path, target: object, noun: str, error: type[TlkitError], timeout: float
) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise _busy(lock_file, target, noun, error) from None
    try:
        yield
    finally:
        lock.release()


def _busy(lock_file: Path, target: object, noun: str, error: type[TlkitError]) -> TlkitError:
    holder = lock_holder(lock_file)
    who = describe_holder(holder) + ", " if holder else ""
    return error(
        f"{target}: this {noun} is being written by another tlkit process ({who}lock {lock_file.name}); "
        "wait for it to finish, or write to another {param}",
        param="output",
    )


def lock_holder(lock_file: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds ``lock_file`` (``{"pid", "host", "since"}``), or ``None`` when no live process holds it.

    Read-only: the file says who, and a non-blocking shared ``flock`` says whether that process still holds it
    (the kernel drops the lock of a process that died, even by ``kill -9``; a clean release deletes the file).
    """
    lock_file = Path(lock_file)
    try:
        info = json.loads(lock_file.read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _held_by_someone(lock_file):
        return None
    return info


def describe_holder(info: Mapping[str, Any]) -> str:
    """``"pid N on host H, since T"``."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since") or 0)))
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, since {since}"


def _held_by_someone(lock_file: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): a lock file exists only while held
        return True
    try:
        fd = os.open(lock_file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
