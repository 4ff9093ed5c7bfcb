"""Sharded extraction under ``torchrun``: every rank extracts one shard into its own part, rank 0 merges them.

``torchrun --nproc-per-node N -m tlkit extract BACKBONE INPUT -o CACHE.h5`` runs the ordinary command on every rank.
:func:`tlkit.extract` resolves the runtime (which carries the rank and world size from the launcher) and plans the
job (backbone, data, key, window) on each rank as a single process would, then hands it here. This module only
shards, gathers and merges:

1. The ranks check that they planned alike (one key, rank 0's window), and rank 0 says whether ``CACHE.h5`` is
   already up to date, holding its lock while the parts are made.
2. Rank ``i`` runs the engine on shard ``i/S`` into ``CACHE.h5.shards/shard-i-of-S.h5`` (``S`` is the number of
   ranks, or fewer when there are fewer items than ranks). Each part is a normal crash-safe cache with its own
   work folder and lock, so a rank that died resumes its own part when the same command runs again. Rows of an
   existing ``CACHE.h5`` are copied, not recomputed.
3. The ranks meet (gloo: extraction exchanges only small objects, so no NCCL communicator is made even on GPUs).
   Rank 0 merges the parts with :func:`tlkit.cache.merge_caches`, which checks that they share one key and one
   dataset and cover it exactly once, and copies them in shard order: the rows, ids and order equal those of a
   single-process run. The parts are then deleted.

Errors travel between ranks with their parameter (``param=``), so the CLI on rank 0 still names the flag.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from tlkit.cache import FeatureCache, cache_lock, key_mismatch, merge_caches
from tlkit.contract.backbone import Backbone
from tlkit.errors import BadInputError, CacheError, ConfigError, FingerprintMismatchError, TlkitError
from tlkit.extraction.engine import ExtractResult, result_of, run_job
from tlkit.extraction.plan import ExtractJob, shard_count
from tlkit.runtime import distributed as D
from tlkit.runtime.progress import ProgressCallback

SHARDS_SUFFIX = ".shards"
#: Errors re-raised on every rank as the same class (they take a message and ``param``).
_SIMPLE_ERRORS = (BadInputError, CacheError, ConfigError, FingerprintMismatchError)
T = TypeVar("T")


def shards_dir_for(output: str | os.PathLike[str]) -> Path:
    """The folder that holds the per-rank parts of a sharded extraction into ``output``."""
    output = Path(output)
    return output.with_name(output.name + SHARDS_SUFFIX)


def part_path(output: str | os.PathLike[str], index: int, count: int) -> Path:
    return shards_dir_for(output) / f"shard-{index:05d}-of-{count:05d}.h5"


@dataclass
class _Plan:
    """What rank 0 decided, sent to every rank."""

    status: str  # "work" | "up-to-date"
    existed: bool = False  # the cache existed before this run
    shards: int = 0
    n_items: int = 0
    n_skipped: int = 0


@dataclass(frozen=True)
class _Failure:
    """An error on its way to the other ranks: its class name, message (``{param}`` kept) and parameter."""

    kind: str
    message: str
    param: str | None = None

    @classmethod
    def of(cls, exc: Exception) -> _Failure:
        if isinstance(exc, TlkitError):
            return cls(type(exc).__name__, exc.template if exc.template is not None else str(exc), exc.param)
        return cls("RuntimeError", f"{type(exc).__name__}: {exc}")

    def error(self, prefix: str = "") -> Exception:
        """The error to raise on this rank: the same tlkit class where one by that name takes a message; with a
        ``prefix`` (another rank's failure), a :class:`TlkitError`."""
        from tlkit import errors

        cls = getattr(errors, self.kind, None)
        if not prefix and isinstance(cls, type) and issubclass(cls, _SIMPLE_ERRORS):
            return cls(self.message, param=self.param)
        if not prefix and self.kind == "RuntimeError":
            return RuntimeError(self.message)
        return TlkitError(prefix + self.message, param=self.param)


@dataclass
class _Outcome:
    """One rank's part: what it did, or why it failed."""

    rank: int
    result: ExtractResult | None = None
    failure: _Failure | None = None


def extract_sharded(
    job: ExtractJob,
    output: Path,
    *,
    overwrite: bool = False,
    reuse: Sequence[Path] = (),
    progress: ProgressCallback | None = None,
    started: float | None = None,
) -> ExtractResult:
    """Extract ``job`` into the one cache ``output`` with every rank of the ``torchrun`` job (see the module doc).

    Every rank calls it with the job it planned from the same options; each returns the same result for the merged
    cache. ``reuse`` names other complete caches whose rows are copied; ``progress`` is only called on rank 0 (its
    own shard, then the merge).
    """
    started = time.perf_counter() if started is None else started
    with D.process_group("gloo", D.timeout_seconds(D.EXTRACT_TIMEOUT_S)) as env:
        job = _agree(job)
        with contextlib.ExitStack() as held:

            def plan_on_rank0() -> _Plan:
                # rank 0 holds the cache's lock while the parts are made: another writer of -o is refused meanwhile
                held.enter_context(cache_lock(output))
                return _plan(job, output, overwrite, env.world_size)

            plan = _shared(env, plan_on_rank0)
            if plan.status == "up-to-date":
                return result_of(job, output, "up-to-date", started, n_items=plan.n_items, n_computed=0,
                                 n_reused=plan.n_items, n_skipped=plan.n_skipped)  # fmt: skip
            works = env.rank < plan.shards
            outcome = _Outcome(env.rank)
            bb = _attempt(outcome, job.backbone.load) if works else None
            _same_weights_everywhere(bb, outcome)
            if bb is not None and outcome.failure is None:
                outcome.result = _attempt(outcome, lambda: _extract_part(
                    job, output, env.rank, plan, overwrite, reuse, progress if env.is_main else None
                ))  # fmt: skip
            # Everyone waits here for the slowest shard (the long gloo timeout allows hours of skew).
            outcomes: list[_Outcome] = D.all_gather_object(outcome)
        _raise_failures(outcomes, env.rank)
        merged = _shared(env, lambda: _merge(output, plan, progress))
        return _result(job, output, merged, outcomes, plan, started)


def _agree(job: ExtractJob) -> ExtractJob:
    """Every rank planned its own job; all must share rank 0's key, and all use rank 0's window plan."""
    planned: list[tuple[dict[str, Any], int]] = D.all_gather_object((job.key, job.window))
    key0, window0 = planned[0]
    for rank, (key, _) in enumerate(planned):
        diff = key_mismatch(key0, key)
        if diff:
            raise ConfigError(
                f"rank {rank} planned other settings than rank 0 ({'; '.join(diff)}); on mixed hardware give the "
                f"device and precision explicitly"
            )
    return replace(job, window=window0)


def _attempt(outcome: _Outcome, fn: Callable[[], T]) -> T | None:
    """``fn()``, or ``None`` with the error noted in ``outcome`` (every rank hears of it at the next gather)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every rank learns of it, then it is raised
        outcome.failure = _Failure.of(exc)
    return None


def _raise_failures(outcomes: Sequence[_Outcome], rank: int) -> None:
    """Raise this rank's own error, or name the first rank that failed."""
    failed = [o for o in outcomes if o.failure is not None]
    mine = next((o for o in failed if o.rank == rank), None)
    if mine is not None and mine.failure is not None:
        raise mine.failure.error()
    if failed and failed[0].failure is not None:
        raise failed[0].failure.error(prefix=f"rank {failed[0].rank} failed: ")


def _same_weights_everywhere(bb: Backbone | None, outcome: _Outcome) -> None:
    """Refuse to merge parts computed by different networks. The fingerprint names the weights, but a random
    initialisation that a plugin does not seed differs in every process."""
    digest = None
    if bb is not None and outcome.failure is None:
        digest = tuple(int(D.bits_sum(t)) for t in bb.module.state_dict().values())
    digests = {d for d in D.all_gather_object(digest) if d is not None}
    if len(digests) > 1 and outcome.failure is None:
        outcome.failure = _Failure(
            "ConfigError",
            f"the ranks built different weights for {bb.name if bb is not None else 'the backbone'} (a random "
            f"initialisation this plugin does not seed); set {{param}} to pretrained or a weights file, so that every "
            f"shard comes from one network",
            "weights",
        )


def _shared(env: D.DistEnv, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and send its result (or its error) to every rank. Every rank raises the same error,
    so no rank waits forever for a peer that failed."""
    value: T | None = None
    failure: _Failure | None = None
    if env.is_main:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised
            failure = _Failure.of(exc)
    value, failure = D.broadcast_object((value, failure))
    if failure is not None:
        raise failure.error()
    return cast(T, value)


def _plan(job: ExtractJob, output: Path, overwrite: bool, world_size: int) -> _Plan:
    """Rank 0: whether ``output`` is already current, and how many shards the items make."""
    n = len(job.records())
    if n == 0:
        raise BadInputError(f"{job.dataset.root}: no items to extract")
    current = None if overwrite else _up_to_date(output, job)
    if current is not None:
        return _Plan("up-to-date", True, n_items=current[0], n_skipped=current[1])
    # One shard per rank, but never an empty one: only an input with fewer items than ranks uses fewer ranks.
    shards = shard_count(n, world_size)
    return _Plan("work", output.exists(), shards=shards)


def _up_to_date(output: Path, job: ExtractJob) -> tuple[int, int] | None:
    """``(items, skipped)`` when ``output`` is a complete, unsharded cache of exactly this data and key."""
    if not output.exists():
        return None
    try:
        with FeatureCache(output) as fc:
            meta = fc.meta
            n = len(fc)
    except CacheError:
        return None  # incomplete or damaged: the engine reports it (or overwrite replaces it)
    ds = meta.get("dataset", {})
    same = (
        not key_mismatch(meta.get("key", {}), job.key)
        and meta.get("shard") is None
        and ds.get("fingerprint") == job.dataset.fingerprint()
        and ds.get("limit") == job.limit
        and ds.get("mode", "mirror") == "mirror"
        and meta.get("class_names") == list(job.dataset.class_names)
    )
    return (n, len(meta.get("skipped", []))) if same else None


def _extract_part(
    job: ExtractJob,
    output: Path,
    index: int,
    plan: _Plan,
    overwrite: bool,
    reuse: Sequence[Path],
    progress: ProgressCallback | None,
) -> ExtractResult:
    """This rank's shard into its own part file: rows of the cache, of earlier parts and of ``reuse`` are copied."""
    part = part_path(output, index, plan.shards)
    part.parent.mkdir(parents=True, exist_ok=True)
    sources = [output] if output.exists() else []
    sources += _finished_parts(output, exclude_count=plan.shards) + list(reuse)
    with cache_lock(part):
        return run_job(job, part, shard=(index, plan.shards), overwrite=overwrite, reuse=sources, progress=progress)


def _finished_parts(output: Path, exclude_count: int) -> list[Path]:
    """Complete parts left by an earlier run with another number of ranks: their rows can be copied."""
    folder = shards_dir_for(output)
    if not folder.is_dir():
        return []
    suffix = f"-of-{exclude_count:05d}.h5"
    return sorted(p for p in folder.glob("shard-*-of-*.h5") if not p.name.endswith(suffix))


def _merge(output: Path, plan: _Plan, progress: ProgressCallback | None) -> dict[str, int]:
    """Rank 0: merge the parts into ``output`` (atomically replacing it) and delete them."""
    parts = [part_path(output, i, plan.shards) for i in range(plan.shards)]
    missing = [p for p in parts if not p.is_file()]
    if missing:
        raise CacheError(
            f"{missing[0]} is not visible on rank 0; on several nodes {{param}} must be on a filesystem every node "
            f"shares (or run one job per node, each on its own shard, and merge the parts)",
            param="output",
        )
    merge_caches(parts, output, overwrite=True, progress=progress)
    shutil.rmtree(shards_dir_for(output), ignore_errors=True)
    with FeatureCache(output) as fc:
        return {"items": len(fc), "skipped": len(fc.skipped)}


def _result(
    job: ExtractJob, output: Path, merged: dict[str, int], outcomes: Sequence[_Outcome], plan: _Plan, started: float
) -> ExtractResult:
    """One result for the merged cache: counts summed over ranks, items/s over the slowest rank's loop."""
    results = [o.result for o in outcomes if o.result is not None]
    flags: Counter[str] = Counter()
    for r in results:
        flags.update(r.flags)
    if any(r.status == "resumed" for r in results):
        status = "resumed"
    else:
        status = "updated" if plan.existed else "created"
    return result_of(
        job, output, status, started, n_items=merged["items"], n_computed=sum(r.n_computed for r in results),
        n_reused=sum(r.n_reused for r in results), n_skipped=merged["skipped"],
        skipped_now=[s for r in results for s in r.skipped_now], flags=dict(flags),
        compute_seconds=max(r.compute_seconds for r in results),
    )  # fmt: skip


__all__ = ["extract_sharded", "part_path", "shards_dir_for"]
