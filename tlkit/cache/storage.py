"""How cache bytes reach the disk: h5py access, chunking, disk reservation, write errors and the writer's lock.

h5py and numpy are imported inside the functions, so importing the cache package stays cheap.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.format import lock_path_for
from tlkit.data.ids import id_bytes
from tlkit.data.records import PackedStrings
from tlkit.errors import CacheError
from tlkit.fileio import describe_holder, lock_holder, output_file, writer_lock

if TYPE_CHECKING:
    import numpy as np

#: Target size of one HDF5 chunk; rows per chunk follow from the row width.
CHUNK_BYTES = 1 << 20


def cache_lock(path: str | os.PathLike[str], timeout: float = 0) -> AbstractContextManager[None]:
    """Hold ``CACHE.h5.lock`` while in the ``with`` block; a second writer gets a clear :class:`CacheError`.

    The lock is an OS file lock (``flock``), so the kernel drops it when the holder dies, even by ``kill -9``.
    While it is held, the lock file names the writer (pid, host, start time) for :func:`live_writer`; a clean
    release deletes it (:func:`tlkit.fileio.writer_lock`). A path that is a folder is refused here, before
    anything is computed: every writer of a cache takes this lock first.
    """
    path = output_file(path, "features.h5", CacheError)
    return writer_lock(lock_path_for(path), path, noun="cache", error=CacheError, timeout=timeout)


def folder_instead_of_cache(path: str | os.PathLike[str]) -> str | None:
    """The one message for a folder given where a cache file is read (``train``, ``--val``, ``cache info``,
    ``cache verify``, a cache as ``predict``/``evaluate`` input), or ``None`` when ``path`` is no folder."""
    path = Path(path)
    if not path.is_dir():
        return None
    return f"{path} is a folder, not a cache file; give the .h5 file written by tlkit extract"


def live_writer(path: str | os.PathLike[str]) -> str | None:
    """``"pid N on host H, since T"`` when a live process holds the cache's writer lock, else ``None``.

    Read-only for the cache: the lock file says who, and a non-blocking shared ``flock`` on it says whether that
    writer still lives (the kernel drops the lock of a process that died, even by ``kill -9``).
    """
    holder = lock_holder(lock_path_for(path))
    return describe_holder(holder) if holder is not None else None


def h5py_module() -> Any:
    """h5py, imported on first use."""
    import h5py

    return h5py


def str_dtype() -> Any:
    """The HDF5 type of ``ids`` and ``stamps``: variable-length UTF-8 strings."""
    return h5py_module().string_dtype("utf-8")


def as_str_array(items: Sequence[str]) -> np.ndarray:
    import numpy as np

    if isinstance(items, PackedStrings):
        out = np.empty(len(items), dtype=object)
        out[:] = list(items.raw_items())
        return out
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
    text = sum(
        48 * len(column)
        + (column.nbytes if isinstance(column, PackedStrings) else sum(len(id_bytes(s)) for s in column))
        for column in strings
    )
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
