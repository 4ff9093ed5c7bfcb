"""From items to committed segments: the loop that feeds batches through the forward pass, and the writer thread
that turns each finished *window* of rows into a segment file while the next batches compute.

A window is ``job.window`` consecutive items. Its rows may arrive out of order (length bucketing); the writer puts
them back in dataset order and writes the segment atomically, so a crash loses at most the windows in flight and a
resumed run recomputes exactly the windows an uninterrupted run would have.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tlkit.cache.workdir import SegmentData, WorkDir
from tlkit.data.base import Record, Skipped
from tlkit.data.records import ids_stamps_at, item_id, item_stamp
from tlkit.errors import BadInputError
from tlkit.extraction.forward import NONFINITE_REASON, Runner, finite_rows
from tlkit.extraction.loader import Batch, make_loader
from tlkit.extraction.plan import ExtractJob
from tlkit.runtime.progress import ProgressCallback, ProgressEvent, emit

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class _Rows:
    """One batch's results on their way to the writer (host tensors, ready once ``event`` has completed)."""

    event: torch.cuda.Event | None
    positions: list[int]
    features: torch.Tensor | None
    layers: dict[str, torch.Tensor]
    views: list[torch.Tensor]
    bad: list[tuple[int, str]]
    flags: Counter[str]


@dataclass
class Computed:
    """What :func:`compute_segments` did: the new segment files, item flags, skips and the loop's seconds."""

    paths: list[Path] = field(default_factory=list)
    flags: Counter[str] = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    workers: int | None = None  # the loader's worker processes (measured with --workers auto); None: none ran
    rows_at: list[np.ndarray] = field(default_factory=list)  # per new segment: the todo positions of its rows
    bad: list[dict[str, str]] = field(default_factory=list)  # the new segments' skips (id, reason, stamp)


class WindowWriter(threading.Thread):
    """Collects a window's rows, restores dataset order and writes the segment, while the next batches compute."""

    def __init__(
        self,
        work: WorkDir,
        records: Sequence[Record],
        first_seq: int,
        views: int,
        layers: Sequence[str],
        on_commit: Callable[[int], None],
    ) -> None:
        super().__init__(name="tlkit-cache-writer", daemon=True)
        self.work, self.records = work, records
        self.seq, self.n_views, self.layers = first_seq, views, list(layers)
        self.on_commit = on_commit
        self.queue: queue.Queue[tuple[str, int, _Rows | None] | None] = queue.Queue(maxsize=8)  # memory stays flat
        self.error: BaseException | None = None
        self.paths: list[Path] = []
        self.rows_at: list[np.ndarray] = []  # per segment, the positions (in ``records``) of its rows, in row order
        self.bad: list[dict[str, str]] = []
        self.nonfinite: list[int] = []  # positions whose embeddings held NaN/Inf, recorded as bad items

    def run(self) -> None:
        parts: dict[int, list[_Rows]] = {}
        while True:
            msg = self.queue.get()
            if msg is None:
                return
            if self.error is not None:
                continue  # drain so the producer never blocks
            try:
                kind, w, rows = msg
                if kind == "commit":
                    self._commit(w, parts.pop(w, []))
                elif rows is not None:
                    parts.setdefault(w, []).append(rows)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc

    def _commit(self, w: int, parts: list[_Rows]) -> None:
        import numpy as np

        positions: list[int] = []
        bad: list[tuple[int, str]] = []
        flags: Counter[str] = Counter()
        feats: list[np.ndarray] = []
        views: list[np.ndarray] = []
        lays: dict[str, list[np.ndarray]] = {k: [] for k in self.layers}
        for p in parts:
            if p.event is not None:
                p.event.synchronize()
            self._drop_nonfinite(p)
            positions += p.positions
            bad += p.bad
            flags.update(p.flags)
            if p.features is not None:
                feats.append(p.features.numpy())
                for k in self.layers:
                    lays[k].append(p.layers[k].numpy())
                if self.n_views:
                    views.append(np.stack([v.numpy() for v in p.views]))
        at = np.asarray(positions, np.int64)
        order = np.argsort(at, kind="stable")
        at = at[order]
        rec = self.records
        ids, stamps = ids_stamps_at(rec, at)
        if feats:
            features = np.concatenate(feats)[order]
            layers = {k: np.concatenate(v)[order] for k, v in lays.items()}
            vw = np.concatenate(views, axis=1)[:, order] if self.n_views else None
        else:
            features = np.zeros((0, 0), np.float32)
            layers, vw = {}, None
        bad.sort()
        skipped = [{"id": item_id(rec, p), "reason": r, "stamp": item_stamp(rec, p)} for p, r in bad]
        data = SegmentData(w, ids, stamps, features, layers, vw, skipped, dict(flags))
        self.paths.append(self.work.write_segment(self.seq, data))
        self.rows_at.append(at)
        self.bad += skipped
        self.seq += 1
        self.on_commit(len(positions) + len(bad))

    def _drop_nonfinite(self, p: _Rows) -> None:
        """Rows whose embeddings hold NaN or Inf become bad items (named, with a reason): a cache never holds them."""
        keep = finite_rows(p.features, p.layers, p.views) if p.features is not None else None
        if keep is None or p.features is None:
            return
        flags = keep.tolist()
        dropped = [pos for pos, k in zip(p.positions, flags, strict=True) if not k]
        self.nonfinite += dropped
        p.bad = p.bad + [(pos, NONFINITE_REASON) for pos in dropped]
        p.positions = [pos for pos, k in zip(p.positions, flags, strict=True) if k]
        p.features = p.features[keep]
        p.layers = {k: v[keep] for k, v in p.layers.items()}
        p.views = [v[keep] for v in p.views]


def compute_segments(
    job: ExtractJob, todo: Sequence[Record], work: WorkDir, first_seq: int, progress: ProgressCallback | None
) -> Computed:
    """Run the loader, the forward pass and the writer over ``todo``; the writer commits one segment per window."""
    job.backbone.load()
    runner = Runner(job.backbone, job.runtime, job.layers, job.store_dtype)
    loader = make_loader(
        todo, job.reader, job.backbone, job.runtime, batch=job.batch_size, window=job.window, views=job.views,
        seed=job.view_seed, decode=job.decode,
    )  # fmt: skip
    n, window = len(todo), job.window
    committed = [0]
    writer = WindowWriter(
        work, todo, first_seq, job.views, job.layers, lambda k: committed.__setitem__(0, committed[0] + k)
    )
    writer.start()
    out = Computed()
    received: Counter[int] = Counter()
    done = 0
    started = time.perf_counter()  # rates and ETA count the loop only, not imports and model loading
    try:
        emit(progress, ProgressEvent("extract", 0, n, 0, 0.0))
        for b in loader:
            if writer.error is not None:
                raise writer.error
            w = (b.positions[0] if b.positions else b.bad[0][0]) // window
            out.skipped += _bad_items(job, todo, b)
            out.flags.update(b.flags)
            writer.queue.put(("rows", w, _embed(runner, b)))
            received[w] += b.size
            if received[w] == min(window, n - w * window):
                writer.queue.put(("commit", w, None))
            done += b.size
            emit(progress, ProgressEvent("extract", done, n, len(out.skipped), time.perf_counter() - started,
                                         info={"committed": committed[0]}))  # fmt: skip
    finally:
        runner.close()
        writer.queue.put(None)
        writer.join()
    if writer.error is not None:
        raise writer.error
    out.skipped += [Skipped(todo[pos].id, NONFINITE_REASON) for pos in sorted(writer.nonfinite)]
    out.paths, out.seconds, out.workers = writer.paths, time.perf_counter() - started, loader.workers
    out.rows_at, out.bad = writer.rows_at, writer.bad
    return out


def _bad_items(job: ExtractJob, todo: Sequence[Record], b: Batch) -> list[Skipped]:
    """The batch's unreadable items, as skips; the first one is an error with ``on_error="fail"``."""
    out = []
    for pos, reason in b.bad:
        rec = todo[pos]
        if job.on_error == "fail":
            raise BadInputError(
                f"{rec.id}: {reason}; fix or remove it and rerun (finished work is kept), or set {{param}} to skip",
                param="on_error",
            )
        out.append(Skipped(rec.id, reason))
    return out


def _embed(runner: Runner, b: Batch) -> _Rows:
    """The batch's embeddings, copied to the host (asynchronously on CUDA, with an event the writer waits on)."""
    import torch

    if not b.positions:
        return _Rows(None, [], None, {}, [], b.bad, b.flags)
    feats, lay, vf = runner.forward(
        runner.to_device(b.inputs), [runner.to_device(v) for v in b.views], len(b.positions)
    )
    cuda = runner.runtime.device_type == "cuda"
    event = None
    feats = feats.to("cpu", non_blocking=cuda)
    lay = {k: v.to("cpu", non_blocking=cuda) for k, v in lay.items()}
    vf = [v.to("cpu", non_blocking=cuda) for v in vf]
    if cuda:
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
    return _Rows(event, b.positions, feats, lay, vf, b.bad, b.flags)


__all__ = ["Computed", "WindowWriter", "compute_segments"]
