"""The extraction engine: one process extracts a planned job into a crash-safe HDF5 cache.

Reruns are keyed: rows of the existing cache (and of other caches named in ``reuse``) whose items are unchanged are
copied, an interrupted run's committed windows are resumed from its work folder, and only the rest is computed
(:func:`tlkit.extraction.writer.compute_segments`). The final file is assembled from all those sources in dataset
order and published atomically. See ``docs/extraction.md`` for the user view and :mod:`tlkit.cache` for the files.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tlkit.cache import FORMAT_NAME, FORMAT_VERSION, FeatureCache, key_mismatch
from tlkit.cache.assemble import AssemblyPlan, assemble
from tlkit.cache.format import read_strings, timestamp
from tlkit.cache.storage import write_error
from tlkit.cache.workdir import Segment, WorkDir
from tlkit.data.base import UNLABELLED, Record, Skipped
from tlkit.data.records import PackedStrings, as_packed, item_id, labels_of, take
from tlkit.errors import BadInputError, CacheError, FingerprintMismatchError
from tlkit.extraction.known import FinalTable, Known
from tlkit.extraction.plan import ExtractJob, backbone_info, shard_range
from tlkit.extraction.writer import Computed, compute_segments
from tlkit.fileio import publish
from tlkit.runtime.progress import ProgressCallback, ProgressEvent, emit


@dataclass
class ExtractResult:
    """What an extraction did. ``status`` is ``created``, ``updated``, ``replaced``, ``resumed`` or ``up-to-date``."""

    path: Path
    status: str
    n_items: int  # rows in the cache now
    n_computed: int  # items forwarded by this run
    n_reused: int  # rows taken from the existing cache or from an interrupted run
    n_skipped: int  # items recorded as unreadable in the cache
    skipped_now: list[Skipped] = field(default_factory=list)  # the listing's skips and this run's unreadable items
    unlabelled: list[str] = field(default_factory=list)  # ids without a label in a labelled dataset (kept as rows)
    flags: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = ""
    precision: str = ""
    batch_size: int = 0
    workers: int = 0
    compute_seconds: float = 0.0  # from the first batch to the last: what items/s is measured over

    @property
    def items_per_s(self) -> float:
        """Items computed per second of the extraction loop (start-up and the final file excluded)."""
        return self.n_computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: items, skipped, seconds and items/s."""
        if self.status == "up-to-date":
            skipped = f" ({self.n_skipped:,} skipped)" if self.n_skipped else ""
            return f"{self.path} is up to date: {self.n_items:,} items{skipped}, nothing to extract"
        notes = [f"{self.n_computed:,} computed"]
        if self.n_reused:
            notes.append(f"{self.n_reused:,} reused")
        notes.append(f"{self.n_skipped:,} skipped")
        notes += [f"{v:,} {k}" for k, v in sorted(self.flags.items()) if v]
        return (
            f"{self.status} {self.path}: {self.n_items:,} items ({', '.join(notes)}) in {self.seconds:.1f} s, "
            f"{self.items_per_s:,.1f} items/s"
        )


def result_of(job: ExtractJob, output: Path, status: str, started: float, **counts: Any) -> ExtractResult:
    """An :class:`ExtractResult` with the job's runtime filled in."""
    rt = job.runtime
    return ExtractResult(
        output, status, seconds=time.perf_counter() - started, device=rt.device_name, precision=rt.precision,
        batch_size=job.batch_size, **{"workers": rt.workers, **counts},
    )  # fmt: skip


def run_job(
    job: ExtractJob,
    output: Path,
    *,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    keep_existing: bool = False,
    reuse: Sequence[Path] = (),
    progress: ProgressCallback | None = None,
    started: float | None = None,
) -> ExtractResult:
    """Extract ``job`` (shard ``shard`` of it, if given) into ``output``. The caller holds ``output``'s lock.

    ``keep_existing`` keeps cached rows whose items are not in the job (union mode); otherwise the cache mirrors
    the job's items. ``reuse`` names other complete caches with the same key whose rows are copied, not recomputed.
    """
    started = time.perf_counter() if started is None else started
    selection = job.records()
    if shard is not None:
        selection = shard_range(selection, shard, job.window, job.batch_size)
    if not selection and shard is None:
        raise BadInputError(f"{job.dataset.root}: no items to extract")
    with _ignore_sigxfsz():
        run = _Run(job, output, selection, shard, overwrite, keep_existing, progress, started)
        return run.execute(reuse)


@contextlib.contextmanager
def _ignore_sigxfsz() -> Iterator[None]:
    """A file-size limit (RLIMIT_FSIZE) kills a process with SIGXFSZ by default; ignored, the write fails with
    EFBIG instead and the engine ends with a clear message and a resumable cache."""
    sig = getattr(signal, "SIGXFSZ", None)
    if sig is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(sig, old)


def _read_base(output: Path, key: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The existing cache's metadata (with its ids, stamps and labels) when its rows may be reused; refuse (or,
    with ``overwrite``, ignore) a cache made with other settings."""
    if not output.exists():
        return None
    try:
        with FeatureCache(output) as fc:
            meta = fc.meta
            meta["_ids"] = fc.ids
            meta["_stamps"] = read_strings(fc.file["stamps"]) if "stamps" in fc.file else [""] * len(fc)
            meta["_labels"] = fc.labels
    except CacheError as exc:
        if overwrite:
            return None
        raise CacheError(f"{exc}; pass {{param}} to replace it", param="overwrite") from None
    diff = key_mismatch(meta.get("key", {}), key)
    if diff:
        if overwrite:
            return None
        raise FingerprintMismatchError(
            f"{output} was extracted with other settings ({'; '.join(diff)}); its features must not be mixed with "
            f"these. Pass {{param}} to replace it, or write to another output path",
            param="overwrite",
        )
    return meta


@dataclass
class _Run:
    job: ExtractJob
    output: Path
    selection: Sequence[Record]  # a list, or a RecordTable (tlkit.data.records): no object per item
    shard: tuple[int, int] | None
    overwrite: bool
    keep_existing: bool
    progress: ProgressCallback | None
    started: float

    def execute(self, reuse: Sequence[Path]) -> ExtractResult:
        base = _read_base(self.output, self.job.key, self.overwrite)
        work = WorkDir(self.output)
        plan = self._resume_plan(work, base)
        segments = work.segments() if plan is not None else []
        known = self._known(base, reuse, segments)
        todo_at = known.todo(self.selection, self.job)  # None: every item (a fresh run)
        todo = self.selection if todo_at is None else take(self.selection, todo_at)
        n_reused = len(self.selection) - len(todo)
        if not todo and base is not None and not segments:
            current = self._up_to_date(base, known, n_reused)
            if current is not None:
                return current
        fresh = bool(todo) and plan is None
        if fresh:
            plan = {"format": "tlkit-work", "version": 1, "run_id": uuid.uuid4().hex, "key": self.job.key,
                    "window": self.job.window, "todo": len(todo), "target": self.output.name}  # fmt: skip
            work.start(plan)
        run_id = plan["run_id"] if plan is not None else uuid.uuid4().hex
        status = self._status(resumed=bool(segments), updated=base is not None)
        with work.removed_if_empty_on_error(fresh):  # a failed start leaves no stale work folder
            computed = self._compute(work, todo, segments, known)
        table = self._table(known, base, todo_at)
        skipped_all = self._skipped(known)
        if not len(table.ids):
            work.remove()
            self._nothing_readable(skipped_all)
        self._publish(work, known, table, self._metadata(run_id, skipped_all, computed.flags))
        result = result_of(
            self.job, self.output, status, self.started, n_items=len(table.ids),
            n_computed=len(todo) - len(computed.skipped), n_reused=n_reused, n_skipped=len(skipped_all),
            skipped_now=self._listing_skips() + computed.skipped, flags=dict(computed.flags),
            compute_seconds=computed.seconds, unlabelled=self._unlabelled(),
            **({"workers": computed.workers} if computed.workers is not None else {}),
        )  # fmt: skip
        emit(self.progress, ProgressEvent("done", len(table.ids), len(table.ids), len(skipped_all), result.seconds,
                                          result.summary()))  # fmt: skip
        return result

    def _known(self, base: dict[str, Any] | None, reuse: Sequence[Path], segments: Sequence[Segment]) -> Known:
        """The rows already computed: the existing cache's, other caches' with this key, an interrupted run's."""
        known = Known()
        if base is not None:
            known.add_cache(self.output, base)
        for extra in reuse:  # other caches with this key: their rows are copied, never recomputed; ours win
            other = _read_base(extra, self.job.key, self.overwrite) if extra != self.output else None
            if other is not None:
                known.add_cache(extra, other)
        for seg in segments:
            known.add_segment(seg)
        return known

    def _compute(self, work: WorkDir, todo: Sequence[Record], segments: Sequence[Segment], known: Known) -> Computed:
        """Compute ``todo`` into new segments after the resumed ones and add their rows to ``known`` (by position:
        the writer says which items each new segment holds); the flags count the resumed segments' items too."""
        if not todo:
            computed = Computed()
        else:
            from tlkit.host.describe import check_live

            self.job.backbone.check_weights_available()
            check_live(self.job.backbone, self.job.key["backbone"])  # a remembered fingerprint must be the model's
            first_seq = (segments[-1].seq + 1) if segments else 0
            computed = compute_segments(self.job, todo, work, first_seq, self.progress)
            known.add_computed(len(todo), computed.paths, computed.rows_at, computed.bad, todo)
        for seg in segments:
            computed.flags.update(seg.flags)
        return computed

    def _status(self, resumed: bool, updated: bool) -> str:
        if resumed:
            return "resumed"
        if updated:
            return "updated"
        return "replaced" if self.output.exists() else "created"

    def _resume_plan(self, work: WorkDir, base: dict[str, Any] | None) -> dict[str, Any] | None:
        """An interrupted run's plan to resume (its windows are adopted, so resumed rows match exactly), or
        ``None``. A stale or foreign work folder is removed; one made with other settings is refused."""
        plan = work.read_plan() if work.exists() else None
        if work.exists():
            stale = plan is not None and base is not None and base.get("run_id") == plan.get("run_id")
            if plan is None or stale:
                work.remove()  # a crash before the plan was written, or after the cache was published
                plan = None
            else:
                diff = key_mismatch(plan.get("key", {}), self.job.key)
                if diff:
                    if not self.overwrite:
                        raise FingerprintMismatchError(
                            f"{work.path} holds an interrupted extraction with other settings ({'; '.join(diff)}); "
                            f"rerun that command to finish it, or pass {{param}} to discard it",
                            param="overwrite",
                        )
                    work.remove()
                    plan = None
                elif plan.get("window") != self.job.window:
                    self.job = replace(self.job, window=int(plan["window"]))
        work.clear_temporaries()
        return plan

    def _up_to_date(self, base: dict[str, Any], known: Known, n_reused: int) -> ExtractResult | None:
        """Nothing to compute: a result when the cache already is what this run would write."""
        if self.keep_existing:
            n = len(base["_ids"])
            return result_of(self.job, self.output, "up-to-date", self.started, n_items=n, n_computed=0,
                             n_reused=n_reused, n_skipped=len(base.get("skipped", [])))  # fmt: skip
        final = known.final_rows(self.selection)
        if (
            final.ids == base["_ids"]
            and final.labels.tolist() == [int(x) for x in base["_labels"]]
            and final.stamps == base["_stamps"]
            and base.get("class_names") == list(self.job.dataset.class_names)
            and [s for s in base.get("skipped", []) if "stamp" not in s] == [s.to_dict() for s in self._listing_skips()]
        ):
            return result_of(self.job, self.output, "up-to-date", self.started, n_items=len(final.ids), n_computed=0,
                             n_reused=len(final.ids), n_skipped=len(base.get("skipped", [])))  # fmt: skip
        return None

    def _table(self, known: Known, base: dict[str, Any] | None, todo_at: Any = None) -> FinalTable:
        """The final rows: the selection in order, minus bad items; in union mode, the old cache's other rows first."""
        import numpy as np

        table = known.final_rows(self.selection, todo_at)
        if self.keep_existing and base is not None:
            chosen = set(table.ids)
            extra = []  # (id, stamp, label, row) of the old cache's rows (source 0) that this run did not choose
            for r, (i, s) in enumerate(zip(base["_ids"], base["_stamps"], strict=True)):
                hit = known.index.find(i) if i not in chosen else None
                if hit is not None and hit[1] == 0:
                    extra.append((i, s, int(base["_labels"][r]), hit[2]))
            table = FinalTable(
                PackedStrings.concat([PackedStrings.of(e[0] for e in extra), as_packed(table.ids)]),
                np.concatenate([np.zeros(len(extra), np.int32), table.src]),
                np.concatenate([np.asarray([e[3] for e in extra], np.int64), table.rows]),
                np.concatenate([np.asarray([e[2] for e in extra], np.int64), table.labels]),
                PackedStrings.concat([PackedStrings.of(e[1] for e in extra), as_packed(table.stamps)]),
            )
        return table

    def _skipped(self, known: Known) -> list[dict[str, str]]:
        return known.skips_in(self.selection) + [s.to_dict() for s in self._listing_skips()]

    def _listing_skips(self) -> list[Skipped]:
        """What the reader left out while listing the data (recorded once, by shard 0 of a sharded run)."""
        return list(self.job.dataset.skipped) if self.shard is None or self.shard[0] == 0 else []

    def _unlabelled(self) -> list[str]:
        """Ids of this run's items that have no label although the dataset has labels."""
        if not self.job.dataset.labelled:
            return []
        import numpy as np

        return [item_id(self.selection, p) for p in np.flatnonzero(labels_of(self.selection) == UNLABELLED).tolist()]

    def _nothing_readable(self, skipped: list[dict[str, str]]) -> None:
        first = skipped[0] if skipped else None
        why = f" (first: {first['id']}: {first['reason']})" if first else ""
        root = self.job.dataset.root
        if self.shard is not None:
            raise BadInputError(f"shard {self.shard[0]}/{self.shard[1]} of {root} holds no readable items{why}")
        raise BadInputError(f"{root}: none of the {len(self.selection)} items could be read{why}")

    def _metadata(self, run_id: str, skipped: list[dict[str, str]], flags: Counter[str]) -> dict[str, Any]:
        job, ds = self.job, self.job.dataset
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tlkit_version": _tlkit_version(),
            "complete": False,
            "run_id": run_id,
            "created": timestamp(),
            "backbone": backbone_info(job.backbone),
            "key": job.key,
            "precision": job.runtime.precision,
            "store_dtype": job.store_dtype,
            "layers": list(job.layers),
            "views": job.views,
            "class_names": list(ds.class_names),
            "dataset": {
                "root": str(ds.root),
                "reader": ds.reader,
                "options": ds.options,
                "fingerprint": ds.fingerprint(),
                "records": len(ds.records),
                "limit": job.limit,
                "unlabelled": len(self._unlabelled()),
                "mode": "union" if self.keep_existing else "mirror",
            },
            "shard": {"index": self.shard[0], "count": self.shard[1], "window": job.window} if self.shard else None,
            "skipped": skipped,
            "flags": dict(flags),
            "extraction": {
                "device": str(job.runtime.device),
                "batch_size": job.batch_size,
                "workers": job.runtime.workers,
                "window": job.window,
            },  # fmt: skip
        }

    def _publish(self, work: WorkDir, known: Known, table: FinalTable, meta: dict[str, Any]) -> None:
        """Assemble the final file beside the work folder and move it into place atomically."""
        import numpy as np

        work.path.mkdir(parents=True, exist_ok=True)
        tmp = work.path / "assembled.h5.tmp"
        plan = AssemblyPlan(
            known.sources, np.asarray(table.src, np.int32), np.asarray(table.rows, np.int64), table.ids,
            np.asarray(table.labels, np.int64), table.stamps,
        )  # fmt: skip
        assemble(tmp, plan, meta, layers=list(self.job.layers), n_views=self.job.views,
                 store_dtype=self.job.store_dtype, progress=self.progress, started=self.started)  # fmt: skip
        try:
            publish(tmp, self.output)
        except OSError as exc:
            raise write_error(self.output, exc, kept="finished rows are kept") from exc
        work.remove()


def _tlkit_version() -> str:
    from tlkit import __version__

    return __version__


__all__ = ["ExtractResult", "result_of", "run_job"]
