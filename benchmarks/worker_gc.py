"""Processes that read beside the model, with and without :func:`tlkit.data.workers.freeze_inherited` (issue 18).

Over the same WebDataset shards of small PNGs (made here, as ``streams.py`` makes them), alternated ``--reps``
times, in this process:

- ``worker``: the CPU time per item of one real DataLoader worker process of ``tlkit extract`` (the extraction's
  loader, ``fake/image`` at 8x8, batches of 256), from the finished worker's resource usage; one worker, so that
  no other process shares its core;
- ``listing``: the CPU time of the listing processes of ``open_dataset`` (one per core), and its wall time;
- ``copied``: how much of the memory a forked process shares with this one it copies (its private dirty memory,
  ``/proc/self/smaps_rollup``) during one full garbage collection, the first thing it does (Linux only).

"frozen" is tlkit's way (the process leaves the objects it inherited out of its garbage collections); "as is" swaps
:func:`freeze_inherited` for a function that does nothing. Medians, and the ratio as is / frozen (above 1: freezing
saves that share).

    python benchmarks/worker_gc.py --n 100000 --reps 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _extract_data import report
from streams import PER_SHARD, make_shards


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def keep_gc(worker_id: int = 0) -> None:
    """The "as is" start: the collector keeps walking what the process inherited."""


def private_dirty_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def copied_mb(start: Any) -> float:
    """MB of memory shared with this process that a forked child copies during one full collection after ``start``."""
    import gc
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: start as a worker does, collect once, report, leave without cleaning up
        start()
        before = private_dirty_kb()
        gc.collect()
        os.write(w, str(private_dirty_kb() - before).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        return int(f.read()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="items (8x8 PNGs with a cls member; 20 shards)")
    ap.add_argument("--reps", type=int, default=5, help="alternated repetitions (the median is reported)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import tlkit
    import tlkit.data.webdataset as wds_module
    import tlkit.extraction.loader as loader_module
    from tlkit.data.workers import freeze_inherited
    from tlkit.host.readers import get_reader, open_dataset
    from tlkit.runtime import RuntimeOptions, resolve

    starts = {"frozen": freeze_inherited, "as is": keep_gc}
    with tempfile.TemporaryDirectory() as tmp:
        pattern = make_shards(Path(tmp) / "shards", args.n)
        ds = open_dataset(pattern, "image")
        reader = get_reader(ds)
        bb = tlkit.get_backbone("fake/image", preprocess={"input_size": [3, 8, 8]})
        bb.load()
        rt = resolve("extract", RuntimeOptions.of("cpu", "fp32", 256, 1), env=None)

        def worker() -> tuple[float, float]:
            loader = loader_module.make_loader(ds.records, reader, bb, rt, batch=256, window=4096)
            c0, t0 = children_cpu(), time.perf_counter()
            n = sum(b.size for b in loader)
            return (children_cpu() - c0) / n * 1e6, time.perf_counter() - t0

        def listing() -> tuple[float, float]:
            c0, t0 = children_cpu(), time.perf_counter()
            listed = open_dataset(pattern, "image")
            assert len(listed.records) == len(ds.records)
            return children_cpu() - c0, time.perf_counter() - t0

        copied = {how: copied_mb(start) for how, start in starts.items()}
        runs: dict[str, dict[str, list[tuple[float, float]]]] = {"worker": {}, "listing": {}}
        worker()  # warm-up: the files' pages, first decodes
        for _ in range(args.reps):
            for how, start in starts.items():
                loader_module.freeze_inherited = start  # type: ignore[assignment]
                wds_module.freeze_inherited = start  # type: ignore[assignment]
                runs["worker"].setdefault(how, []).append(worker())
                runs["listing"].setdefault(how, []).append(listing())
        loader_module.freeze_inherited = wds_module.freeze_inherited = freeze_inherited
        med: dict[str, Any] = {
            task: {how: [statistics.median(v[k] for v in r) for k in (0, 1)] for how, r in rs.items()}
            for task, rs in runs.items()
        }
        result: dict[str, object] = {
            "n": len(ds.records),
            "shards": -(-args.n // PER_SHARD),
            "reps": args.reps,
            "listed_in_processes": med["listing"]["frozen"][0] > 0,  # else the shards were too few to list in parallel
            "worker_cpu_us_per_item": {how: m[0] for how, m in med["worker"].items()},
            "listing_cpu_s": {how: m[0] for how, m in med["listing"].items()},
            "listing_wall_s": {how: m[1] for how, m in med["listing"].items()},
            "worker_as_is_over_frozen": med["worker"]["as is"][0] / med["worker"]["frozen"][0],
            "copied_by_a_full_collection_mb": copied,
            "listing_cpu_as_is_over_frozen": med["listing"]["as is"][0] / max(med["listing"]["frozen"][0], 1e-9),
            "runs": runs,
        }
        report(result, args.json)
        print(f"worker CPU per item: frozen {med['worker']['frozen'][0]:.1f} us, as is {med['worker']['as is'][0]:.1f} "
              f"us: {result['worker_as_is_over_frozen']:.2f}x")  # fmt: skip
        print(f"memory a forked process copies in one full collection: frozen {copied['frozen']:.1f} MB, as is "
              f"{copied['as is']:.1f} MB")  # fmt: skip
        print(f"listing processes' CPU: frozen {med['listing']['frozen'][0]:.2f} s, as is "
              f"{med['listing']['as is'][0]:.2f} s: {result['listing_cpu_as_is_over_frozen']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
