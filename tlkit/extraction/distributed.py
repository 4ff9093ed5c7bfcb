"""Sharded extraction under ``torchrun``: every rank extracts one shard into its own part, rank 0 merges them.

``torchrun --nproc-per-node N -m tlkit extract BACKBONE INPUT -o CACHE.h5`` runs :func:`extract_distributed` on
every rank:

1. Rank 0 plans: it resolves the backbone, the data and the settings once (device-dependent ones such as
   ``--precision auto`` and the commit window are fixed here and handed to every rank, so all parts share one key
   and one window plan) and says whether ``CACHE.h5`` is already up to date.
2. Rank ``i`` runs the ordinary engine with ``--shard i/S`` into ``CACHE.h5.shards/shard-i-of-S.h5`` (``S`` is the
   number of ranks, or fewer when there are fewer windows than ranks). Each part is a normal crash-safe cache with
   its own work folder and lock, so a rank that died resumes its own part when the same command runs again. Rows
   of an existing ``CACHE.h5`` are copied, not recomputed.
3. The ranks meet at a barrier (gloo: extraction exchanges only small objects, so no NCCL communicator is made even
   on GPUs). Rank 0 merges the parts with :func:`tlkit.cache.core.merge_caches`, which checks that they share one key and
   one dataset and cover it exactly once, and copies them in shard order: the rows, ids and order equal those of a
   single-process run. The parts are then deleted.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlkit.cache import core as C
from tlkit.runtime import distributed as D
from tlkit.errors import BadInputError, CacheError, ConfigError, TlkitError
from tlkit.extraction.engine import ExtractResult
from tlkit.runtime.progress import ProgressCallback

SHARDS_SUFFIX = ".shards"


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
    window: int = 0
    precision: str = ""
    n_items: int = 0
    n_skipped: int = 0


@dataclass
class _Outcome:
    """One rank's part: what it did, or why it failed."""

    rank: int
    result: ExtractResult | None = None
    error: str | None = None
    error_type: str = ""


def extract_distributed(
    backbone: str,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | str = "auto",
    workers: int | str = "auto",
    layers: str | Sequence[str] = "last",
    views: int = 0,
    store_dtype: str = "float32",
    on_error: str = "skip",
    limit: int | None = None,
    overwrite: bool = False,
    shard: str | None = None,
    commit_rows: int | None = None,
    reader: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    view_seed_base: int = 0,
) -> ExtractResult:
    """Extract ``input`` into the one cache ``output`` with every rank of a ``torchrun`` job (see the module doc).

    Call it on every rank with the same arguments; each returns the same :class:`ExtractResult` for the merged
    cache. ``progress`` is only called on rank 0 (its own shard, then the merge). Options are those of
    :func:`tlkit.extract`; ``--shard`` is implied.
    """
    output = Path(output)
    if D.dist_env() is None:
        raise ConfigError("extract_distributed runs under torchrun with 2 or more processes; call tlkit.extract")
    if shard is not None:
        raise ConfigError(
            f"--shard {shard} is for independent jobs; under torchrun every rank takes its own shard, drop --shard"
        )
    with D.process_group("gloo", D.timeout_seconds(D.EXTRACT_TIMEOUT_S)) as env:
        started = time.perf_counter()
        opts = dict(
            weights=weights, batch_size=batch_size, layers=layers, views=views, store_dtype=store_dtype,
            on_error=on_error, limit=limit, overwrite=overwrite, reader=reader,
            reader_options=dict(reader_options or {}), view_seed_base=view_seed_base,
        )  # fmt: skip
        local_dev = D.local_device(env, device)
        n_workers = _rank_workers(workers, env, local_dev)
        with contextlib.ExitStack() as held:

            def plan_on_rank0() -> _Plan:
                # rank 0 holds the cache's lock while the parts are made: another writer of -o is refused meanwhile
                held.enter_context(C.cache_lock(output))
                return _plan(backbone, input, output, local_dev, precision, commit_rows, opts, env)

            plan: _Plan = _shared(env, plan_on_rank0)
            if plan.status == "up-to-date":
                return ExtractResult(output, "up-to-date", plan.n_items, 0, plan.n_items, plan.n_skipped,
                                     seconds=time.perf_counter() - started, device=local_dev,
                                     precision=plan.precision, workers=n_workers)  # fmt: skip
            outcome = _Outcome(env.rank)
            bb = (
                _attempt(outcome, lambda: _load_backbone(backbone, opts["weights"])) if env.rank < plan.shards else None
            )
            _same_weights_everywhere(bb, outcome)
            if bb is not None and outcome.error is None:
                outcome.result = _attempt(outcome, lambda: _extract_part(
                    bb, input, output, env.rank, plan, local_dev, n_workers, opts, progress if env.is_main else None
                ))  # fmt: skip
            # Everyone waits here for the slowest shard (the long gloo timeout allows hours of skew).
            outcomes: list[_Outcome] = D.all_gather_object(outcome)
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            mine = next((o for o in failed if o.rank == env.rank), None)
            if mine is not None:
                raise _error_of(mine.error_type)(str(mine.error))
            first = failed[0]
            raise TlkitError(f"rank {first.rank} failed: {first.error}")
        merged = _shared(env, lambda: _merge(output, plan, progress))
        return _result(output, merged, outcomes, plan, started, local_dev, n_workers)


def _attempt(outcome: _Outcome, fn: Any) -> Any:
    """``fn()``, or ``None`` with the error noted in ``outcome`` (every rank hears of it at the next gather)."""
    try:
        return fn()
    except TlkitError as exc:
        outcome.error, outcome.error_type = str(exc), type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - every rank learns of it, then it is raised
        outcome.error, outcome.error_type = f"{type(exc).__name__}: {exc}", "RuntimeError"
    return None


def _load_backbone(backbone: Any, weights: Any) -> Any:
    from tlkit.extraction.engine import resolve_backbone

    return resolve_backbone(backbone, weights).load()


def _same_weights_everywhere(bb: Any, outcome: _Outcome) -> None:
    """Refuse to merge parts computed by different networks. The fingerprint names the weights, but a random
    initialisation (``--weights none``) that a plugin does not seed differs in every process."""
    digest = None
    if bb is not None and outcome.error is None:
        digest = tuple(int(D.bits_sum(t)) for t in bb.module.state_dict().values())
    digests = {d for d in D.all_gather_object(digest) if d is not None}
    if len(digests) > 1 and outcome.error is None:
        outcome.error, outcome.error_type = (
            f"the ranks built different weights for {bb.name if bb is not None else 'the backbone'} (a random "
            f"initialisation this plugin does not seed); use --weights pretrained or a weights file, so that every "
            f"shard comes from one network",
            "ConfigError",
        )


# -- rank 0 work, shared with every rank -----------------------------------------------------------------------
def _shared(env: D.DistEnv, fn: Any) -> Any:
    """Run ``fn`` on rank 0 and send its result (or its error) to every rank. Every rank raises the same error,
    so no rank waits forever for a peer that failed."""
    value: Any = None
    error: tuple[str, str] | None = None
    if env.is_main:
        try:
            value = fn()
        except TlkitError as exc:
            error = (type(exc).__name__, str(exc))
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised
            error = ("RuntimeError", f"{type(exc).__name__}: {exc}")
    value, error = D.broadcast_object((value, error))
    if error is not None:
        raise _error_of(error[0])(error[1])
    return value


def _error_of(name: str) -> Any:
    """A constructor for the error class ``name`` (a tlkit error where one by that name takes a message)."""
    from tlkit import errors

    cls = getattr(errors, name, None)
    simple = (errors.BadInputError, errors.CacheError, errors.ConfigError, errors.FingerprintMismatchError)
    if isinstance(cls, type) and issubclass(cls, simple):
        return cls
    return RuntimeError if name == "RuntimeError" else TlkitError


def _plan(
    backbone: str,
    input: Any,
    output: Path,
    device: str,
    precision: str,
    commit_rows: int | None,
    opts: dict[str, Any],
    env: D.DistEnv,
) -> _Plan:
    """Resolve what every shard must share (precision, window, key) and whether ``output`` is already current."""
    from tlkit.extraction.engine import (
        parse_layers,
        resolve_backbone,
        resolve_batch_size,
        resolve_device,
        resolve_input,
        resolve_precision,
        window_rows,
    )

    if opts["store_dtype"] not in C.STORE_DTYPES:
        raise ConfigError(f"--store-dtype must be one of {', '.join(C.STORE_DTYPES)}, not {opts['store_dtype']!r}")
    bb = resolve_backbone(backbone, opts["weights"])
    dataset, _ = resolve_input(input, bb, opts["reader"], opts["reader_options"])
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    batch, _ = resolve_batch_size(opts["batch_size"], dev)
    layer_names = parse_layers(opts["layers"], bb)
    views = int(opts["views"] or 0)
    itemsize = 2 if opts["store_dtype"] == "float16" else 4
    window = window_rows(batch, bb.spec.embed_dim, len(layer_names), views, itemsize, commit_rows)
    limit = opts["limit"]
    n = min(len(dataset.records), int(limit)) if limit is not None else len(dataset.records)
    if n == 0:
        raise BadInputError(f"{dataset.root}: no items to extract")
    key = {
        "backbone": bb.fingerprint(), "precision": prec, "store_dtype": opts["store_dtype"], "layers": layer_names,
        "views": views, "augment": bb.augment if views else None,
        "view_seed": opts["view_seed_base"] if views else None, "reader": dataset.reader,
        "reader_options": dataset.options,
    }  # fmt: skip
    current = _up_to_date(output, key, dataset, limit) if not opts["overwrite"] else None
    if current is not None:
        return _Plan("up-to-date", True, precision=prec, n_items=current[0], n_skipped=current[1])
    # One shard per rank, but never an empty one: a tiny input uses fewer ranks than were started.
    shards = max(1, min(env.world_size, math.ceil(n / window)))
    return _Plan("work", output.exists(), shards=shards, window=window, precision=prec)


def _up_to_date(output: Path, key: dict[str, Any], dataset: Any, limit: int | None) -> tuple[int, int] | None:
    """``(items, skipped)`` when ``output`` is a complete, unsharded cache of exactly this data and key."""
    if not output.exists():
        return None
    try:
        with C.FeatureCache(output) as fc:
            meta = fc.meta
            n = len(fc)
    except CacheError:
        return None  # incomplete or damaged: the engine reports it (or --overwrite replaces it)
    ds = meta.get("dataset", {})
    same = (
        not C.key_mismatch(meta.get("key", {}), key)
        and meta.get("shard") is None
        and ds.get("fingerprint") == dataset.fingerprint()
        and ds.get("limit") == limit
        and ds.get("mode", "mirror") == "mirror"
        and meta.get("class_names") == list(dataset.class_names)
    )
    return (n, len(meta.get("skipped", []))) if same else None


def _rank_workers(workers: int | str, env: D.DistEnv, device: str) -> int:
    """``auto`` shares this node's cores between its ranks (each rank would otherwise start a loader per core)."""
    from tlkit.extraction.engine import resolve_device, resolve_workers

    if workers not in (None, "auto"):
        return resolve_workers(workers, resolve_device(device))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = max(1, cpus // env.local_world_size)
    cap = 32 if device.startswith("cuda") else 4
    return min(cap, max(per_rank - 1, 0))


def _extract_part(
    backbone: Any,
    input: Any,
    output: Path,
    index: int,
    plan: _Plan,
    device: str,
    workers: int,
    opts: dict[str, Any],
    progress: ProgressCallback | None,
) -> ExtractResult:
    from tlkit.extraction.engine import extract

    part = part_path(output, index, plan.shards)
    part.parent.mkdir(parents=True, exist_ok=True)
    reuse = [output] if output.exists() else []
    reuse += _finished_parts(output, exclude_count=plan.shards)
    # the loaded backbone itself (weights=None keeps it): the network whose digest every rank compared
    return extract(
        backbone, input, part, device=device, precision=plan.precision, workers=workers, shard=(index, plan.shards),
        commit_rows=plan.window, progress=progress, reuse=reuse, **{**opts, "weights": None},
    )  # fmt: skip


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
            f"{missing[0]} is not visible on rank 0; on several nodes the -o path must be on a filesystem every node "
            f"shares (or run tlkit extract --shard I/N per node and tlkit cache merge)"
        )
    C.merge_caches(parts, output, overwrite=True, progress=progress)
    shutil.rmtree(shards_dir_for(output), ignore_errors=True)
    with C.FeatureCache(output) as fc:
        return {"items": len(fc), "skipped": len(fc.skipped)}


def _result(
    output: Path,
    merged: dict[str, int],
    outcomes: Sequence[_Outcome],
    plan: _Plan,
    started: float,
    device: str,
    workers: int,
) -> ExtractResult:
    """One result for the merged cache: counts summed over ranks, items/s over the slowest rank's loop."""
    results = [o.result for o in outcomes if o.result is not None]
    flags: Counter = Counter()
    for r in results:
        flags.update(r.flags)
    if any(r.status == "resumed" for r in results):
        status = "resumed"
    else:
        status = "updated" if plan.existed else "created"
    first = results[0]
    return ExtractResult(
        output, status, merged["items"], sum(r.n_computed for r in results), sum(r.n_reused for r in results),
        merged["skipped"], [s for r in results for s in r.skipped_now], dict(flags), time.perf_counter() - started,
        device, plan.precision, first.batch_size, workers, max(r.compute_seconds for r in results),
    )  # fmt: skip
