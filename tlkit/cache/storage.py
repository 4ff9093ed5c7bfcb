"""How cache bytes reach the disk: h5py access, chunking, disk reservation, write errors and the writer's lock.

h5py and numpy are imported inside the functions, so importing the cache package stays cheap.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.format import lock_path_for
from tlkit.data.ids import id_bytes
from tlkit.errors import CacheError
from tlkit.fileio import writer_lock

if TYPE_CHECKING:
    import numpy as np

#: Target size of one HDF5 chunk; rows per chunk follow from the row width.
CHUNK_BYTES = 1 << 20


def cache_lock(path: str | os.PathLike[str], timeout: float = 0) -> AbstractContextManager[None]:
    """Hold ``CACHE.h5.lock`` while in the ``with`` block; a second writer gets a clear :class:`CacheError`.

    The lock is an OS file lock (``flock``), so the kernel drops it when the holder dies, even by ``kill -9``.
    While it is held, ``CACHE.h5.lock.owner`` names the writer (pid, host, start time) for :func:`live_writer`.
    """
    return _owned_lock(Path(path), timeout)


@contextlib.contextmanager
def _owned_lock(path: Path, timeout: float) -> Iterator[None]:
    with writer_lock(lock_path_for(path), path, noun="cache", error=CacheError, timeout=timeout):
        owner = _owner_path(path)
        with contextlib.suppress(OSError):  # the owner note is a courtesy to readers; the lock is what counts
            owner.write_text(
                json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}), "utf-8"
            )
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                owner.unlink()


def _owner_path(path: Path) -> Path:
    lock = lock_path_for(path)
    return lock.with_name(lock.name + ".owner")


def live_writer(path: str | os.PathLike[str]) -> str | None:
    """``"pid N on host H, since T"`` when a live process holds the cache's writer lock, else ``None``.

    Read-only for the cache: the owner note says who, and a non-blocking shared ``flock`` on the lock file says
    whether that writer still lives (the kernel drops the lock of a process that died, even by ``kill -9``).
    """
    path = Path(path)
    try:
        info = json.loads(_owner_path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _lock_held(lock_path_for(path)):
        return None
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since") or 0)))
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, since {since}"


def _lock_held(lock: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): trust the owner note
        return True
    try:
        fd = os.open(lock, os.O_RDONLY)
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


def h5py_module() -> Any:
    """h5py, imported on first use."""
    import h5py

    return h5py


def str_dtype() -> Any:
    """The HDF5 type of ``ids`` and ``stamps``: variable-length UTF-8 strings."""
    return h5py_module().string_dtype("utf-8")


def as_str_array(items: Sequence[str]) -> np.ndarray:
    import numpy as np

    return np.array([id_bytes(s) for s in items], dtype=object)  # non-UTF-8 names keep their bytes


def le_bytes(a: np.ndarray) -> bytes:
    """The little-endian bytes of an array: what the checksums in the metadata hash."""
    import numpy as np

    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()


def chunk_rows(row_bytes: int, n_rows: int) -> int:
    return max(1, min(n_rows, max(64, CHUNK_BYTES // max(row_bytes, 1)), 65536))


def estimate_bytes(n: int, width: int, itemsize: int, strings: Sequence[Sequence[str]], extra: int = 0) -> int:
    """A generous size for a file of ``n`` rows: numeric data, variable-length strings (about 48 bytes of heap
    overhead each), chunk indexes and metadata."""
    text = sum(48 + len(id_bytes(s)) for column in strings for s in column)
    data = n * width * itemsize + 8 * n
    return int((data + text) * 1.05) + extra + (64 << 10)


def reserve(path: Path, nbytes: int) -> None:
    """Claim ``nbytes`` of disk for a file h5py has just created, before HDF5 writes into it.

    HDF5 handles a failed write badly (errors while closing, even a crash), so a full disk or a file-size limit
    must surface here, as a plain ``OSError`` (ENOSPC or EFBIG), and never inside HDF5. HDF5 trims the file to
    its real size when it closes it.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.ftruncate(fd, max(nbytes, os.fstat(fd).st_size))  # no fallocate here: still checks size limits
    finally:
        os.close(fd)


def write_error(path: Path, exc: BaseException, kept: str = "") -> CacheError:
    """A one-line error for a failed write: disk full and file-size limits get the fix spelled out."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
        s in text for s in ("No space left", "File too large", "Disk quota", "errno = 28", "errno = 27")
    ):
        why = "the disk is full or a file-size limit was reached"
    else:
        why = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
    msg = f"{path}: write failed ({why}); free space or raise the limit, then rerun the same command to resume"
    if kept:
        msg += f" ({kept})"
    return CacheError(msg)
