"""WebDataset tar shards (the format of img2dataset, LAION and clip-retrieval), local or at any fsspec URL.

``INPUT`` is one shard (``shards/00000.tar``), a brace pattern (``shards/{00000..00099}.tar``,
``https://host/data/{000..009}.tar``), a glob, or a folder of ``.tar`` files. A sample is the run of members that
share a key (the member name up to the first dot of its base name: ``000123.jpg`` and ``000123.cls`` are sample
``000123``); the sample's id is ``SHARD/KEY`` (``00007.tar/000123``), with ``SHARD`` relative to the folder all
shards share, so a local copy and the URL give the same ids.

Options (reader options, ``-O KEY=VALUE`` on the CLI):

- ``image_column`` / ``text_column`` / ``audio_column``: the member extension(s) holding the item, ``;``-separated
  (default: every image, ``txt``, or every audio extension);
- ``label_column``: ``cls`` (the member's text is the class), ``json:label`` (a field of the ``.json`` member,
  dotted for nested fields), or any extension; default ``cls`` when samples have one, else unlabelled.

Shards are read with Python's :mod:`tarfile` through :mod:`fsspec` (not the ``webdataset`` library): tlkit needs the
offset of every member so that any item can be read on its own (resume, ``--shard``, torchrun ranks, skips), which
``webdataset``'s sequential pipelines do not give. Listing reads the tar headers and the small label members only.
Python's tar header parsing costs about as much as decoding a small image, so when the first shard's listing says
that the others would take more than :data:`PARALLEL_LISTING_S` seconds here, they are listed by one process per
core (``Reader.max_listing_processes``), a few shards ahead of the records being built (in shard order, so the
listing is the same); they leave the objects they inherit out of their garbage collections
(:func:`tlkit.data.workers.freeze_inherited`).
A remote shard is downloaded once into this process's copies folder (:func:`tlkit.data.remote.local_copy`), listed
there, and its items are read from that copy: listing reads the whole tar anyway, so without the copy every byte
would cross the network twice. ``TLKIT_REMOTE_COPIES`` names another folder for the copies, or ``off``.
Uncompressed tars are random-access; a ``.tar.gz`` shard is refused with the fix (``gunzip`` it). A shard that ends
early (truncated) keeps the samples before the damage and records one skip naming the shard; a missing or
unreachable shard is an error naming it.
"""

from __future__ import annotations

import json
import re
import tarfile
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from tlkit.data.audio import AUDIO_EXTENSIONS
from tlkit.data.base import Dataset, Record, Skipped
from tlkit.data.image import IMAGE_EXTENSIONS
from tlkit.data.remote import (
    OpenFiles,
    common_base,
    copies_folder,
    copy_ticket,
    file_info,
    file_stamp,
    filesystem,
    list_files,
    local_copy,
    unreachable,
)
from tlkit.data.streams import Entry, StreamReader, label_text, option
from tlkit.data.workers import freeze_inherited
from tlkit.errors import BadInputError, BadItemError

TAR_SUFFIXES = (".tar",)
COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
DEFAULT_LABEL = "cls"
_KEY = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]+)$")  # key = dirname + base name up to its first dot
#: Label members are small; a bigger one is refused rather than read (a mislabelled image member, say).
MAX_LABEL_BYTES = 1 << 20
#: Listing the shards after the first one in parallel pays off when doing it here would take longer than this
#: (starting the processes costs well under a second; ``docs/benchmarks.md``, "Large datasets").
PARALLEL_LISTING_S = 2.0

#: One shard's listing: its entries, its skips, and whether any sample had a label member.
Listing = tuple[list[Entry], list[Skipped], bool]


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member name, the extension lower-cased; ``None`` for names without one."""
    m = _KEY.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


class WebDatasetReader(StreamReader):
    format = "webdataset"
    needs = ("fsspec", "webdataset")

    def __init__(self, modality: str = "image") -> None:
        super().__init__(modality)
        self._files = OpenFiles()
        self.listing_processes = 0

    def recognises(self, location: str) -> bool:
        low = location.lower().rstrip("/")
        if low.endswith(TAR_SUFFIXES + COMPRESSED):
            return True
        if "://" in location or any(c in location for c in "{*?["):
            return False
        from pathlib import Path

        p = Path(location).expanduser()
        try:
            return p.is_dir() and any(c.suffix.lower() == ".tar" for c in p.iterdir() if not c.name.startswith("."))
        except OSError:
            return False

    def item_extensions(self, options: dict[str, Any]) -> tuple[str, ...]:
        given = option(options, f"{self.modality}_column")
        if given:
            return tuple(e.strip().lower().lstrip(".") for e in given.split(";") if e.strip())
        if self.modality == "image":
            return tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        if self.modality == "audio":
            return (*(e.lstrip(".") for e in AUDIO_EXTENSIONS), "mp3")
        return ("txt", "text")

    def scan_location(self, location: str, options: dict[str, Any]) -> Dataset:
        self.library()
        low = location.lower()
        if low.endswith(COMPRESSED):
            raise BadInputError(f"{location}: a compressed tar cannot be read item by item; decompress the shards "
                                f"(gunzip) and pass the .tar files")  # fmt: skip
        shards = list_files(location, TAR_SUFFIXES)
        packed = [s for s in shards if s.lower().endswith(COMPRESSED)]
        if packed:
            raise BadInputError(f"{packed[0]}: a compressed tar cannot be read item by item; decompress the shards "
                                f"(gunzip) and pass the .tar files")  # fmt: skip
        base = common_base(shards) if len(shards) > 1 else shards[0][: shards[0].rfind("/") + 1]
        exts = self.item_extensions(options)
        label = option(options, "label_column", "label_field")
        copies = copies_folder(shards[0])
        skipped: list[Skipped] = []
        labelled = [False]

        def entries() -> Iterator[Entry]:  # shard by shard: a listing holds a few shards' members at a time
            for found, skips, any_label in self._scan_shards(shards, base, exts, label, copies=copies):
                skipped.extend(skips)
                labelled[0] = labelled[0] or any_label
                yield from found

        def check(n: int) -> None:
            if label and not labelled[0] and n:
                raise BadInputError(f"{location}: no sample has a {label!r} label; members are named KEY.EXT — set "
                                    f"{{param}} to an extension (cls) or a JSON field (json:label)",
                                    param="label_column")  # fmt: skip

        return self.dataset(location, entries(), skipped, options, listed=check)

    def _scan_shards(
        self,
        shards: list[str],
        base: str,
        exts: tuple[str, ...],
        label: str | None,
        parallel_after_s: float = PARALLEL_LISTING_S,
        copies: str | None = None,
    ) -> Iterator[Listing]:
        """Each shard's listing, in shard order: the first here, timed; the others here too, or, when that would
        take more than ``parallel_after_s``, in up to :attr:`max_listing_processes` processes (one per core when
        the host opened the dataset), at most two shards per process ahead. :attr:`listing_processes` says how many
        processes listed (0: this one alone). With ``copies`` (a folder), remote shards are copied there first."""
        from concurrent.futures import Future, ProcessPoolExecutor

        started = time.perf_counter()
        first = self._scan_shard(shards[0], shards[0][len(base) :], exts, label, copies)
        took = time.perf_counter() - started  # the listing alone, not what the caller does with it
        yield first
        rest = shards[1:]
        procs = min(self.max_listing_processes, len(rest))
        self.listing_processes = 0
        if procs < 2 or took * len(rest) <= parallel_after_s:
            for shard in rest:
                yield self._scan_shard(shard, shard[len(base) :], exts, label, copies)
            return
        pool = ProcessPoolExecutor(procs, initializer=freeze_inherited)
        self.listing_processes = procs
        try:
            todo = iter(rest)
            pending: deque[Future[Listing]] = deque()

            def submit() -> None:
                shard = next(todo, None)
                if shard is not None:
                    pending.append(pool.submit(_scan_in_child, self.modality, shard, shard[len(base) :], exts, label,
                                               copies))  # fmt: skip

            for _ in range(2 * procs):
                submit()
            while pending:
                listing = pending.popleft().result()  # a listing error (a missing shard...) is raised here
                submit()
                yield listing
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _scan_shard(
        self, shard: str, rel: str, exts: tuple[str, ...], label: str | None, copies: str | None = None
    ) -> Listing:
        """The samples of one shard: entries, skips, and whether any sample had a label member. With ``copies``, the
        shard is listed from a local copy made there (when the disk has room), and each entry's source names the
        copy beside the shard (``(shard, offset, size, copy or None)``); ids and stamps are the shard's own."""
        info = file_info(shard)  # missing or unreachable: an error naming the shard
        stamp = file_stamp(info)
        copy = local_copy(shard, copy_ticket(copies, info))
        fs, inner = filesystem(copy or shard)
        entries: list[Entry] = []
        skipped: list[Skipped] = []
        labelled = False
        try:
            with fs.open(inner, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
                for key, members in _samples(tf, skipped, rel, int(info.get("size") or 0)):
                    rid = f"{rel}/{key}"
                    ext = next((e for e in exts if e in members), None)
                    if ext is None:
                        have = ", ".join(sorted(members))
                        skipped.append(Skipped(rid, f"no {self.modality} member ({', '.join(exts)}); it has {have}"))
                        continue
                    m = members[ext]
                    raw_label, why = _label(tf, members, label)
                    if why is not None:
                        skipped.append(Skipped(rid, why))
                        continue
                    labelled = labelled or raw_label is not None
                    entries.append((rid, (shard, m.offset_data, m.size, copy), raw_label, m.size,
                                    f"{stamp}:{m.offset_data}:{m.size}:{raw_label}"))  # fmt: skip
                _check_end(fh, tf.offset, int(info.get("size") or 0))
        except BadInputError:
            raise
        except (tarfile.ReadError, EOFError) as exc:  # damage after the first member: keep what came before
            if not entries and not skipped:
                raise BadInputError(f"{shard}: not a tar file, or damaged at the start ({exc}); check the "
                                    f"shard") from exc  # fmt: skip
            skipped.append(Skipped(f"{rel}/", f"truncated or corrupt tar after {len(entries)} samples ({exc}); "
                                              f"the rest of the shard is not read — rewrite it"))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a transport error names the shard
            raise unreachable(shard, exc) from exc
        return entries, skipped, labelled

    def read(self, record: Record) -> bytes:
        shard, offset, size, *rest = record.source
        copy = rest[0] if rest else None
        if copy:
            try:
                return self._files.read(copy, int(offset), int(size))
            except OSError:
                pass  # the copy is gone (a temporary folder cleaned up under the run): read the shard itself
        try:
            return self._files.read(shard, int(offset), int(size))
        except FileNotFoundError as exc:
            raise BadItemError(record.id, f"shard {shard} is gone (file not found)") from exc
        except OSError as exc:
            raise BadItemError(record.id, f"I/O error reading {shard} ({exc})") from exc


def _scan_in_child(
    modality: str, shard: str, rel: str, exts: tuple[str, ...], label: str | None, copies: str | None
) -> Listing:
    """One shard's listing, in a listing process (a copy goes into the parent's folder)."""
    return WebDatasetReader(modality)._scan_shard(shard, rel, exts, label, copies)


def _check_end(fh: Any, offset: int, size: int) -> None:
    """Where :mod:`tarfile`'s iteration stopped (``offset``) must be the end-of-archive marker, two zero blocks: a
    shard of known ``size`` without room for them was cut short, and :mod:`tarfile` also ends its iteration quietly
    at a damaged member header after the first (a bad checksum reads as the end of the archive), which would drop
    the rest of the shard without a word."""
    if size and offset + 2 * tarfile.BLOCKSIZE > size:
        raise tarfile.ReadError("no end-of-archive marker")
    fh.seek(offset)
    if fh.read(tarfile.BLOCKSIZE).strip(b"\0"):
        raise tarfile.ReadError(f"damaged member header at byte {offset}")


def _samples(tf: tarfile.TarFile, skipped: list[Skipped], rel: str, size: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, {extension: TarInfo})`` for each run of members sharing a key, in shard order. A member that ends
    after the end of the file (a truncated shard) stops the listing with :class:`tarfile.ReadError`."""
    key: str | None = None
    members: dict[str, Any] = {}
    for m in tf:
        if size and m.offset_data + m.size > size:
            raise tarfile.ReadError(f"member {m.name} ends after the end of the file")
        if not m.isfile():
            continue
        parts = split_name(m.name)
        if parts is None:
            continue  # a member without an extension belongs to no sample (webdataset ignores it too)
        k, ext = parts
        if k != key:
            if key is not None and members:
                yield key, members
            key, members = k, {}
        if ext in members:
            skipped.append(Skipped(f"{rel}/{k}", f"member {m.name} is there twice; the first is used"))
            continue
        members[ext] = m
    if key is not None and members:
        yield key, members


def _label(tf: tarfile.TarFile, members: dict[str, Any], spec: str | None) -> tuple[str | None, str | None]:
    """``(raw label, None)`` or ``(None, reason)``: the class from the label member (``cls``) or a JSON field. The
    member is read straight from the shard's file at its offset (:mod:`tarfile` seeks back to its next header
    itself): ``extractfile`` builds two file objects per member, a large share of a listing's time."""
    field = None
    ext = spec or DEFAULT_LABEL
    if ext.startswith("json:"):
        ext, field = "json", ext[len("json:") :]
    m = members.get(ext)
    if m is None:
        return None, None
    if m.size > MAX_LABEL_BYTES:
        return None, f"label member {m.name} is {m.size} bytes; a label is a short text"
    if m.issparse():  # a GNU sparse member (never a label in practice): only tarfile knows its holes
        fh = tf.extractfile(m)
        raw = fh.read() if fh is not None else b""
    else:
        assert tf.fileobj is not None
        tf.fileobj.seek(m.offset_data)
        raw = tf.fileobj.read(m.size)
        if len(raw) != m.size:
            raise tarfile.ReadError(f"member {m.name} ends after the end of the file")
    if field is None:
        return label_text(raw), None
    try:
        value: Any = json.loads(raw)
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{m.name} is not valid JSON ({exc}); fix or remove the sample"
    if isinstance(value, dict | list):
        return None, f"{m.name}: field {field!r} is not a single value"
    return label_text(value), None


__all__ = ["COMPRESSED", "TAR_SUFFIXES", "WebDatasetReader", "split_name"]
