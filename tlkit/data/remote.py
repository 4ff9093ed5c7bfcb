"""Files reached through fsspec: local paths and URLs (``s3://``, ``gs://``, ``https://``, ...), brace patterns and
globs, file stamps, and open files kept per thread.

A shard is named by the string the user gave (expanded); ids use its path relative to the folder the shards share,
so a cache made from a local copy and one made from the URL hold the same ids. A shard that is missing or cannot be
reached is a one-line :class:`tlkit.errors.BadInputError` naming it; nothing is read from it.

Remote files that are read whole are read from a local copy (:func:`local_copy`, in the folder of
:func:`copies_folder`), so that their bytes cross the network once: listing a WebDataset shard reads all of it (tar
headers sit between the members), so the shard is copied, listed there, and its items are read from the copy; a
Parquet table is copied by the first DataLoader worker that needs it, since every worker reads the row groups of its
own batches.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from tlkit.errors import BadInputError, NotInstalled

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
#: Open files kept per thread (a DataLoader worker reads many items of one shard in a row).
MAX_OPEN = 8
#: Where local copies of remote shards and tables go: a folder, or ``off`` to read them over the network (a shard
#: twice: once to list it, once to read its items). Unset: :func:`default_copies_parent`.
REMOTE_COPIES_ENV = "TLKIT_REMOTE_COPIES"
#: A copy is made only while the copies leave at least this much of the disk free, and at least half of what was free
#: when the process made its first copy (so copies never crowd out the cache being written); other shards are read
#: over the network.
COPY_RESERVE_BYTES = 1 << 30
#: Bytes read and written at a time while copying.
COPY_CHUNK = 4 << 20
_COPIES_PREFIX = "tlkit-remote-"
#: A shared folder without users is removed once it is this old (younger, a rank may be about to join it).
ORPHAN_AGE_S = 60.0
_PIDS = ".pids"  # in a folder shared by the ranks of a job: one empty file per process using it
_copies: dict[str, Any] = {}  # this process's copies folder and the disk space free when it was made
_copies_lock = threading.Lock()

T = TypeVar("T")


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL (``scheme://...``); ``file://`` counts."""
    return bool(_URL.match(str(path)))


def is_pattern(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a brace pattern (``{00000..00009}``, ``{a,b}``) or a glob (``*``, ``?``, ``[``)."""
    text = str(path)
    return bool(_BRACE.search(text)) or any(c in text for c in "*?[")


def as_location(path: str | os.PathLike[str]) -> str | Path:
    """A URL or pattern stays a string (``Path`` would fold ``//``); anything else is an expanded ``Path``."""
    text = os.fspath(path)
    if is_url(text) or is_pattern(text):
        return text
    return Path(text).expanduser()


def expand_braces(pattern: str) -> list[str]:
    """Every string a brace pattern stands for, in order: ``{0..3}`` (zero padding kept, ``{00..09}``), ``{a,b}``;
    several braces give their product. A brace that is neither is left as it is."""
    parts: list[list[str]] = []
    pos = 0
    for m in _BRACE.finditer(pattern):
        parts.append([pattern[pos : m.start()]])
        body = m.group(1)
        rng = _RANGE.match(body)
        if rng:
            a, b = int(rng.group(1)), int(rng.group(2))
            width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
            step = 1 if b >= a else -1
            parts.append([str(i).zfill(width) for i in range(a, b + step, step)])
        elif "," in body:
            parts.append(body.split(","))
        else:
            parts.append([m.group(0)])
        pos = m.end()
    parts.append([pattern[pos:]])
    return ["".join(p) for p in itertools.product(*parts)]


def filesystem(location: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path in it)`` for a local path or a URL; a missing protocol library is a
    :class:`NotInstalled` naming the package."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec is in every stream extra
        raise NotInstalled("fsspec", "streams", "reading shards and URLs") from exc
    try:
        fs, inner = url_to_fs(location)
    except ImportError as exc:
        name = getattr(exc, "name", None) or str(exc).split("'")[1 if "'" in str(exc) else 0]
        raise NotInstalled(name, "streams", f"reading {location.split('://')[0]}:// URLs") from exc
    except ValueError as exc:
        raise BadInputError(f"{location}: {exc}; check the URL's protocol") from exc
    return fs, inner


def unreachable(location: str, exc: BaseException) -> BadInputError:
    """The one-line error for a shard or file that is missing or cannot be reached."""
    if isinstance(exc, FileNotFoundError):
        return BadInputError(f"{location}: not found (no such file or URL); check the path or pattern and rerun")
    if isinstance(exc, PermissionError):
        return BadInputError(f"{location}: permission denied; fix its permissions or credentials and rerun")
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return BadInputError(
        f"{location}: cannot be read ({type(exc).__name__}{': ' + detail if detail else ''}); check the URL, the "
        f"network and the credentials, then rerun (finished work is kept)"
    )


def list_files(location: str | os.PathLike[str], suffixes: tuple[str, ...]) -> list[str]:
    """The files ``location`` names, in order: a brace pattern (every expansion must exist), a glob, a folder (its
    files with one of ``suffixes``, recursively, sorted) or one file. Local paths come back as plain paths."""
    text = os.fspath(location)
    if _BRACE.search(text):
        names = expand_braces(text)
        for name in names:
            file_info(name)  # a missing shard is an error naming it, before anything is read
        return names
    fs, inner = filesystem(text)
    protocol = _protocol(text)
    try:
        if _suffix_ok(inner, suffixes) and not any(c in inner for c in "*?["):
            # A file by its name, unless it is a folder (Spark writes data.parquet/): asked with info (HEAD over
            # HTTP), since isdir and exists GET the whole file there.
            if fs.info(inner).get("type") != "directory":
                return [text]
        if any(c in inner for c in "*?["):
            found = sorted(fs.glob(inner))
            if not found:
                raise BadInputError(f"{text}: the pattern matches no file; check it")
            return [_unstrip(protocol, p, text) for p in found]
        if fs.isdir(inner):
            found = sorted(p for p in fs.find(inner) if _suffix_ok(p, suffixes) and not _hidden(p, inner))
            if not found:
                raise BadInputError(f"{text}: no {'/'.join(suffixes)} files in this folder; check the path")
            return [_unstrip(protocol, p, text) for p in found]
        if not fs.exists(inner):
            raise FileNotFoundError(inner)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any transport error names the location
        raise unreachable(text, exc) from exc
    return [text]


def file_info(location: str) -> dict[str, Any]:
    """fsspec's ``info`` of one file; a missing or unreachable file is an error naming it."""
    fs, inner = filesystem(location)
    try:
        info: dict[str, Any] = fs.info(inner)
    except Exception as exc:  # noqa: BLE001 - any transport error names the location
        raise unreachable(location, exc) from exc
    if info.get("type") == "directory":
        raise BadInputError(f"{location}: a folder, not a file; name the files (a pattern or a glob)")
    return info


def file_stamp(info: dict[str, Any]) -> str:
    """What changes when a file changes: its size and the first of mtime, ETag or last-modified the store gives."""
    for key in ("mtime", "ETag", "etag", "LastModified", "Last-Modified", "last_modified", "updated", "md5Hash",
                "created"):  # fmt: skip
        if info.get(key) is not None:
            return f"{info.get('size')}:{info[key]}"
    return f"{info.get('size')}"


def common_base(locations: Iterable[str]) -> str:
    """The folder (with its trailing ``/``) that all ``locations`` share, for short, location-free ids."""
    names = list(locations)
    if not names:
        return ""
    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind("/") + 1]


def is_local(location: str) -> bool:
    """Whether ``location`` is on the local file system (a path or a ``file://`` URL)."""
    if not is_url(location):
        return True
    fs, _ = filesystem(location)
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return bool({"file", "local"} & set(protocols))


def copies_folder(location: str | None = None) -> str | None:
    """The folder for local copies of remote shards, made on first use, or ``None`` when :data:`REMOTE_COPIES_ENV`
    is ``off`` or ``location`` (the data being listed) is on the local file system. A process of its own gets its
    own folder, removed when it ends; the ranks of one ``torchrun`` job on a node share one (each shard is then
    downloaded once per node, not once per rank), removed by the last of them to end. Making it also removes the
    folders that killed processes left behind (none of their processes is alive)."""
    setting = os.environ.get(REMOTE_COPIES_ENV, "").strip()
    if setting.lower() in ("off", "0", "no", "false") or (location is not None and is_local(location)):
        return None
    parent = os.path.expanduser(setting) if setting else default_copies_parent()
    with _copies_lock:
        made = _copies.get(parent)
        if made is not None and made["pid"] == os.getpid() and os.path.isdir(made["folder"]):
            return str(made["folder"])
        os.makedirs(parent, exist_ok=True)
        job = _job_key()
        _remove_orphans(parent, keep=f"{_COPIES_PREFIX}job-{job}" if job else None)
        if job:
            folder = os.path.join(parent, f"{_COPIES_PREFIX}job-{job}")
            _join(folder)
        else:
            folder = tempfile.mkdtemp(prefix=f"{_COPIES_PREFIX}{os.getpid()}-", dir=parent)
        _copies[parent] = {"folder": folder, "pid": os.getpid(), "free": shutil.disk_usage(folder).free}
        atexit.register(_remove_copies, folder, os.getpid())
        return folder


def default_copies_parent() -> str:
    """Where copies go by default: the temporary folder (``TMPDIR``, which batch schedulers point at local scratch),
    unless it lives in memory (a ``tmpfs``, as ``/tmp`` is on many desktops, where copies would take RAM) and
    ``TMPDIR`` is not set: then ``/var/tmp``, the folder for larger temporary files, when it is on a disk."""
    temp = tempfile.gettempdir()
    if os.environ.get("TMPDIR") or not _in_memory(temp) or _in_memory("/var/tmp"):
        return temp
    return "/var/tmp" if os.access("/var/tmp", os.W_OK) else temp


def _in_memory(path: str) -> bool:
    """Whether ``path`` is on a RAM file system (``tmpfs``, ``ramfs``), from ``/proc/mounts`` (Linux; else no)."""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as fh:
            mounts = [line.split()[1:3] for line in fh if len(line.split()) > 2]
    except OSError:
        return False
    real = os.path.realpath(path)
    best = max((m for m in mounts if real == m[0] or real.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)  # fmt: skip
    return best is not None and best[1] in ("tmpfs", "ramfs")


def _join(folder: str) -> None:
    """Mark this process as a user of the shared ``folder`` (made if missing)."""
    for attempt in range(3):
        os.makedirs(os.path.join(folder, _PIDS), exist_ok=True)
        try:
            open(os.path.join(folder, _PIDS, str(os.getpid())), "w").close()  # noqa: SIM115 - an empty marker
            return
        except FileNotFoundError:  # swept by another job's process between the two steps: make it again
            if attempt == 2:
                raise


def _job_key() -> str | None:
    """What the processes of one multi-process launch share (torchrun's run id and rendezvous, from the launcher's
    environment), or ``None`` outside one. Read here rather than through :mod:`tlkit.runtime`, which comes after
    the data stage; sharing copies is safe whether or not the processes form a process group."""
    world = os.environ.get("WORLD_SIZE", "")
    if not world.isdigit() or int(world) <= 1 or not os.environ.get("MASTER_PORT"):
        return None
    parts = [os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")]
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]


def copy_ticket(folder: str | None, info: dict[str, Any]) -> str | None:
    """What :func:`local_copy` needs to make or find the copy of a remote file whose fsspec ``info`` was listed, as
    one string (a listing stores it once per file, and it travels to DataLoader workers inside the records):
    ``None`` without a copies folder."""
    if folder is None:
        return None
    return f"{folder}\0{file_stamp(info)}\0{int(info.get('size') or 0)}"


def local_copy(location: str, ticket: str | None) -> str | None:
    """The path of a local copy of the remote file ``location`` (as listed: :func:`copy_ticket`), made now or
    earlier by this process or another rank of its job on this node; ``None`` without a ticket (no copies) or when
    the disk has no room for it (the file is then read over the network). An error reading ``location`` names it
    (:func:`unreachable`); a copy is written under a temporary name and renamed when complete, so a half-made copy
    is never used."""
    if ticket is None:
        return None
    folder, stamp, size_text = ticket.split("\0")
    key = hashlib.sha1(f"{location}\0{stamp}".encode("utf-8", "surrogatepass")).hexdigest()[:24]
    path = os.path.join(folder, key + os.path.splitext(location)[1])
    if os.path.exists(path):
        return path
    size = int(size_text)
    made = next((m for m in _copies.values() if m["folder"] == folder), None)
    floor = max(COPY_RESERVE_BYTES, int(made["free"]) // 2 if made else 0)
    try:
        if shutil.disk_usage(folder).free - size < floor:
            return None
    except OSError:
        return None
    try:
        with _locked(path + ".lock"):  # another rank, worker or listing process copying it: wait, use its copy
            if os.path.exists(path):
                return path
            return _copy(location, path)
    except OSError:  # the lock file cannot be made (a full disk): read over the network
        return None


def _copy(location: str, path: str) -> str | None:
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.part"
    fs, inner = filesystem(location)
    try:
        with fs.open(inner, "rb") as src, open(tmp, "wb") as dst:
            while True:
                try:
                    chunk = src.read(COPY_CHUNK)
                except Exception as exc:  # noqa: BLE001 - any transport error names the location
                    raise unreachable(location, exc) from exc
                if not chunk:
                    break
                dst.write(chunk)  # a full disk (OSError) leaves the file to the network, below
        os.replace(tmp, path)
    except BadInputError:
        _unlink(tmp)
        raise
    except OSError:
        _unlink(tmp)
        return None
    except Exception as exc:  # noqa: BLE001 - opening the remote file failed: an error naming it
        _unlink(tmp)
        raise unreachable(location, exc) from exc
    return path


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (made if missing), between processes and threads; none where the
    platform has no ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_copies(folder: str, pid: int) -> None:
    """At exit (not in a forked child, which shares the folder name): remove the process's copies; in a shared
    folder, only the last process to leave removes it."""
    if os.getpid() != pid:
        return
    pids = os.path.join(folder, _PIDS)
    if os.path.isdir(pids):
        _unlink(os.path.join(pids, str(pid)))
        if any(n.isdigit() and _alive(int(n)) for n in _listdir(pids)):
            return
    shutil.rmtree(folder, ignore_errors=True)


def _remove_orphans(parent: str, keep: str | None = None) -> None:
    """Remove copies folders none of whose processes is alive (killed before they could remove them), but not
    ``keep`` (this job's)."""
    for name in _listdir(parent):
        if not name.startswith(_COPIES_PREFIX) or name == keep:
            continue
        path = os.path.join(parent, name)
        if name.startswith(f"{_COPIES_PREFIX}job-"):
            owners = [int(n) for n in _listdir(os.path.join(path, _PIDS)) if n.isdigit()]
        else:
            pid_text = name[len(_COPIES_PREFIX) :].split("-", 1)[0]
            owners = [int(pid_text)] if pid_text.isdigit() else []
        if owners and not any(p == os.getpid() or _alive(p) for p in owners):
            shutil.rmtree(path, ignore_errors=True)
        elif not owners and name.startswith(f"{_COPIES_PREFIX}job-") and _age_s(path) > ORPHAN_AGE_S:
            shutil.rmtree(path, ignore_errors=True)  # every rank left without removing it (they ended together)


def _age_s(path: str) -> float:
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return 0.0


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True


class PerThread(Generic[T]):
    """State that each thread of each process has its own of, made by ``make`` on first use: open files (whose
    position is shared by everyone who reads them) and caches. Extraction prepares items on several threads
    (:func:`tlkit.extraction.loader.in_process_on_cpu`) and in forked DataLoader workers; a file object shared by two
    threads mixes their ``seek`` and ``read`` (one item read at another's offset: a skip, or another item's bytes).
    Pickled, it carries nothing: the other process makes its own."""

    def __init__(self, make: Callable[[], T]) -> None:
        self.make = make
        self._init()

    def _init(self) -> None:
        self._local = threading.local()  # a thread's state goes (its files close) when the thread ends
        self._pid = os.getpid()

    def get(self) -> T:
        """This thread's state (new after a fork: a worker does not share its parent's file positions)."""
        if self._pid != os.getpid():
            self._init()
        state: T | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = self.make()
        return state

    def __getstate__(self) -> dict[str, Any]:
        return {"make": self.make}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.make = state["make"]
        self._init()


class OpenFiles:
    """Open binary files by location, a few per thread of each process (:class:`PerThread`)."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.max_open = max_open
        self._files: PerThread[OrderedDict[str, Any]] = PerThread(OrderedDict)

    def get(self, location: str) -> Any:
        """This thread's open file at ``location``; no other thread reads or moves its position."""
        files = self._files.get()
        f = files.get(location)
        if f is not None:
            files.move_to_end(location)
            return f
        if len(files) >= self.max_open:
            _, old = files.popitem(last=False)
            _close(old)
        fs, inner = filesystem(location)
        f = files[location] = fs.open(inner, "rb")
        return f

    def read(self, location: str, offset: int, size: int) -> bytes:
        f = self.get(location)
        f.seek(offset)
        data: bytes = f.read(size)
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes at offset {offset} (the file changed?)")
        return data

    def __getstate__(self) -> dict[str, Any]:  # open files never travel to another process
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(int(state.get("max_open", MAX_OPEN)))  # type: ignore[misc]


def _close(f: Any) -> None:
    try:
        f.close()
    except Exception:  # noqa: BLE001 - closing a cached handle is best effort
        pass


def _protocol(text: str) -> str:
    m = _URL.match(text)
    return m.group(0) if m else ""


def _unstrip(protocol: str, path: str, original: str) -> str:
    """fsspec returns paths without the protocol; local ones stay plain paths."""
    if not protocol or protocol == "file://" or path.startswith(protocol):
        return path
    return protocol + path


def _suffix_ok(path: str, suffixes: tuple[str, ...]) -> bool:
    return path.lower().endswith(suffixes)


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root.rstrip("/")) :].lstrip("/")
    return any(part.startswith(".") for part in rel.split("/"))


__all__ = [
    "MAX_OPEN",
    "REMOTE_COPIES_ENV",
    "OpenFiles",
    "PerThread",
    "as_location",
    "common_base",
    "copies_folder",
    "copy_ticket",
    "expand_braces",
    "file_info",
    "file_stamp",
    "filesystem",
    "is_local",
    "is_pattern",
    "is_url",
    "list_files",
    "local_copy",
    "unreachable",
]
