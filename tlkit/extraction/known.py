"""What an extraction already has: rows of earlier files by id, bad items, and this run's new rows by position.

Memory stays flat in N: rows of earlier files (the existing cache, caches given in ``reuse``, an interrupted run's
segments) are found through a sorted array of id hashes checked against the files' packed ids
(:class:`~tlkit.data.records.PackedStrings`), not a dict of N strings; rows this run computes are placed by their
position in the run's items (the writer says which positions each new segment holds), so a fresh run builds no
index at all. The final table is arrays plus packed strings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache.workdir import Segment
from tlkit.data.base import Record, load_or_skip
from tlkit.data.listing import is_transient
from tlkit.data.records import RecordTable, as_packed, item_id, item_stamp, labels_of
from tlkit.errors import CacheError

if TYPE_CHECKING:
    import numpy as np

    from tlkit.extraction.plan import ExtractJob


class RowIndex:
    """Rows of earlier files by id: ``find(id)`` gives the winning ``(stamp, source, row)``. Rows of caches added
    earlier win over later caches (the first row of an id within a cache wins); segments win over caches, later
    segments over earlier ones, and a segment's skip of an id hides the rows before it."""

    def __init__(self) -> None:
        self._parts: list[tuple[int, Sequence[str], Sequence[str], bool]] = []  # (source, ids, stamps, skip)
        self._prio: list[int] = []
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, source: int, ids: Sequence[str], stamps: Sequence[str], prio: int, skip: bool = False) -> None:
        if len(ids):
            self._parts.append((source, ids, stamps, skip))
            self._prio.append(prio)
            self._index = None

    def _build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import numpy as np

        hashes, prio, part, row = [], [], [], []
        for k, (_, ids, _, _) in enumerate(self._parts):
            n = len(ids)
            hashes.append(np.fromiter((hash(s) for s in ids), np.int64, count=n))
            prio.append(np.full(n, -self._prio[k], np.int64))
            part.append(np.full(n, k, np.int32))
            row.append(np.arange(n, dtype=np.int64))
        h, p, r = np.concatenate(hashes), np.concatenate(part), np.concatenate(row)
        order = np.lexsort((r, np.concatenate(prio), h))  # by hash, then higher priority, then earlier row
        return h[order], p[order], r[order]

    def find(self, item: str) -> tuple[str, int, int] | None:
        if not self._parts:
            return None
        if self._index is None:
            self._index = self._build()
        hashes, part, row = self._index
        key = hash(item)
        i = int(hashes.searchsorted(key))
        while i < len(hashes) and hashes[i] == key:  # equal hashes: the ids decide (exact, never a guess)
            source, ids, stamps, skip = self._parts[int(part[i])]
            r = int(row[i])
            if ids[r] == item:
                return None if skip else (stamps[r], source, r)
            i += 1
        return None


@dataclass
class FinalTable:
    """The final cache's rows: ids with their sources and rows, labels and stamps."""

    ids: Sequence[str]
    src: np.ndarray
    rows: np.ndarray
    labels: np.ndarray
    stamps: Sequence[str]


@dataclass
class Known:
    """What is already computed: rows of earlier files (:class:`RowIndex`), bad items (id -> (stamp, reason)) and,
    once :meth:`add_computed` ran, this run's rows by position in its items."""

    sources: list[Path] = field(default_factory=list)
    index: RowIndex = field(default_factory=RowIndex)
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)
    n_caches: int = 0
    n_segments: int = 0
    computed: tuple[np.ndarray, np.ndarray] | None = None  # per todo position: (source, row), -1 for none

    def add_cache(self, path: Path, meta: dict[str, Any]) -> None:
        """A complete cache's rows and skips; rows of caches added earlier win."""
        self.sources.append(path)
        si = len(self.sources) - 1
        self.index.add(si, as_packed(meta["_ids"]), as_packed(meta["_stamps"]), -self.n_caches)
        self.n_caches += 1
        for sk in meta.get("skipped", []):
            if "stamp" in sk and self.index.find(sk["id"]) is None:
                self.bad.setdefault(sk["id"], (sk["stamp"], sk["reason"]))

    def add_segment(self, seg: Segment) -> None:
        """A committed segment's rows and skips; newer sources win over older ones."""
        self.sources.append(seg.path)
        si = len(self.sources) - 1
        self.n_segments += 1
        self.index.add(si, seg.ids, seg.stamps, self.n_segments)
        if self.bad:
            for i in seg.ids:
                self.bad.pop(i, None)
        skips = [sk for sk in seg.skipped if "stamp" in sk]
        self.index.add(si, [sk["id"] for sk in skips], [sk["stamp"] for sk in skips], self.n_segments, skip=True)
        for sk in seg.skipped:
            self.bad[sk["id"]] = (sk["stamp"], sk["reason"])

    def known(self, rec: Record) -> bool:
        """Whether ``rec`` needs no work: a row with its stamp, or a skip for its stamp whose reason is about the
        content (a skip for a permission, missing-file or I/O error is retried on every run)."""
        h = self.index.find(rec.id)
        if h is not None and h[0] == rec.stamp:
            return True
        b = self.bad.get(rec.id)
        return b is not None and b[0] == rec.stamp and not is_transient(b[1])

    def still_failing(self, rec: Record, job: ExtractJob) -> bool:
        """Retry a skip for a permission, missing-file or I/O error by decoding the item here: ``True`` when it
        fails again for the same reason (nothing to recompute, so an unchanged input stays up to date)."""
        b = self.bad.get(rec.id)
        if b is None or b[0] != rec.stamp or not is_transient(b[1]):
            return False
        return load_or_skip(job.reader, rec)[1] == b[1]

    def todo(self, selection: Sequence[Record], job: ExtractJob) -> np.ndarray | None:
        """Positions of the selection's items that need computing; ``None`` when all do (nothing is known)."""
        import numpy as np

        if not self.index and not self.bad:
            return None
        out = [p for p, rec in enumerate(selection) if not self.known(rec) and not self.still_failing(rec, job)]
        return np.asarray(out, np.int64)

    def add_computed(
        self, n_todo: int, paths: Sequence[Path], rows_at: Sequence[np.ndarray], bad: Sequence[dict[str, str]],
        todo: Sequence[Record],
    ) -> None:  # fmt: skip
        """This run's new segments: ``rows_at[k]`` are the todo positions of segment ``paths[k]``'s rows."""
        import numpy as np

        src = np.full(n_todo, -1, np.int32)
        row = np.full(n_todo, -1, np.int64)
        for path, at in zip(paths, rows_at, strict=True):
            self.sources.append(path)
            src[at] = len(self.sources) - 1
            row[at] = np.arange(len(at), dtype=np.int64)
        if self.bad:  # an item computed now is no longer bad
            for p in np.flatnonzero(src >= 0).tolist():
                self.bad.pop(item_id(todo, p), None)
        for sk in bad:
            self.bad[sk["id"]] = (sk["stamp"], sk["reason"])
        self.computed = (src, row)

    def final_rows(self, selection: Sequence[Record], todo_at: np.ndarray | None = None) -> FinalTable:
        """The final cache's rows, in selection order, bad items left out. ``todo_at``: the selection positions
        computed by this run (``None``: all of them, when :meth:`add_computed` ran, else none)."""
        import numpy as np

        n = len(selection)
        src = np.full(n, -1, np.int32)
        row = np.full(n, -1, np.int64)
        computed = np.zeros(n, bool)
        if self.computed is not None:
            at = np.arange(n) if todo_at is None else todo_at
            src[at], row[at] = self.computed
            computed[at] = True
        missing: list[str] = []
        for p in np.flatnonzero(src < 0).tolist():
            rid = item_id(selection, p)
            if not computed[p]:
                h = self.index.find(rid)
                if h is not None and h[0] == item_stamp(selection, p):
                    src[p], row[p] = h[1], h[2]
                    continue
            if rid not in self.bad:
                missing.append(rid)
        if missing:  # every item is a row or a skip
            raise CacheError(f"internal error: no row for {missing[0]}")
        keep = np.flatnonzero(src >= 0)
        if isinstance(selection, RecordTable):
            if len(keep) == n:  # every item is a row (the usual case): the table's own columns, not copied
                return FinalTable(selection.ids, src, row, selection.labels, selection.stamps)
            ids: Sequence[str] = selection.ids.take(keep)
            stamps: Sequence[str] = selection.stamps.take(keep)
        else:
            ids = [selection[p].id for p in keep.tolist()]
            stamps = [selection[p].stamp for p in keep.tolist()]
        return FinalTable(ids, src[keep], row[keep], labels_of(selection)[keep], stamps)

    def skips_in(self, selection: Sequence[Record]) -> list[dict[str, str]]:
        """The bad items of the selection (in the order they became known), with their stamps."""
        if not self.bad:
            return []
        present = {i for i in _ids(selection) if i in self.bad}
        return [{"id": i, "reason": reason, "stamp": stamp} for i, (stamp, reason) in self.bad.items() if i in present]


def _ids(records: Sequence[Record]) -> Iterator[str]:
    if isinstance(records, RecordTable):
        yield from records.ids
    else:
        for r in records:
            yield r.id


__all__ = ["FinalTable", "Known", "RowIndex"]
