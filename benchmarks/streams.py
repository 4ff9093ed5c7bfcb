"""Large-dataset readers at scale (issue 18): WebDataset shards of small images through the ``fake/image`` backbone.

Measures, each run in its own child process (so its peak memory and CPU time are its own):

1. throughput, four ways over the same shards, interleaved ``--reps`` times: ``read`` lists the shards and reads and
   decodes every item with the reader, in one process (what "reading the shards alone" is); ``bare`` does that plus
   the backbone's preprocessing and forward pass in a plain loop (the same work without tlkit's engine: no loader,
   writer, segments or final file); ``extract`` is ``tlkit.extract`` into a cache in one process (``workers=0``);
   ``extract_auto`` is ``tlkit.extract`` with its defaults (listing processes and ``--workers auto``), what a user
   runs. Wall-clock and CPU-time items/s are recorded (on a shared machine CPU time is the steadier measure of the
   one-process runs), and the CPU time of each run with its child processes (listing processes, loader workers), also
   over its wall time: how many of the machine's cores it kept busy. ``extract_auto/read`` is the issue's ratio,
   ``extract/bare`` the engine's own overhead. Each run also records where its time went (``phase_seconds``: the
   listing and the items for ``read`` and ``bare``, the loop and the rest for the extractions), and the ratio is also
   given for each repetition, whose spread says how far the machine moved during the benchmark.
2. peak memory (max RSS) of extracting N items vs a dataset of N/10 items (the first shards);
3. merging 8 parts (``--shard i/8``) into one cache: copying vs ``--virtual``.

The backbone is ``fake/image`` at the images' own size (``--input-size``, default 8: no resize, the cheapest forward
pass); ``--input-size 32`` is the backbone's default.

    python benchmarks/streams.py --n 200000 --json out.json      # the issue's size
    nice -n 5 python benchmarks/streams.py --n 20000              # a reduced size on a busy machine

Results are recorded in docs/benchmarks.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _extract_data import report

PER_SHARD = 5000


def make_shards(root: Path, n: int, size: int = 8) -> str:
    """``root/{00000..}.tar`` of ``n`` ``size``x``size`` PNGs with a ``cls`` member; returns the brace pattern."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_shards = (n + PER_SHARD - 1) // PER_SHARD
    k = 0
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tf:
            for _ in range(min(PER_SHARD, n - k)):
                buf = io.BytesIO()
                Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
                for ext, data in (("png", buf.getvalue()), ("cls", str(k % 10).encode())):
                    info = tarfile.TarInfo(f"{k:08d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                k += 1
    return str(root / f"{{00000..{n_shards - 1:05d}}}.tar")


def child(task: str, pattern: str, out: str, limit: int | None, shard: str | None, size: int) -> dict[str, Any]:
    """One measurement, run in this (child) process."""
    import torch

    torch.set_num_threads(1)
    import tlkit
    from tlkit.host.readers import get_reader, open_dataset

    preprocess = {"input_size": [3, size, size]}
    t0, c0 = time.perf_counter(), time.process_time()
    loop = 0.0
    phases: dict[str, float] = {}
    if task in ("read", "bare"):
        ds = open_dataset(pattern, "image")
        phases["listing"] = time.perf_counter() - t0
        reader = get_reader(ds)
        records = ds.records[:limit] if limit else ds.records
        if task == "read":
            for r in records:
                reader.load(r)
        else:
            bb = tlkit.get_backbone("fake/image", preprocess=preprocess)
            bb.load()
            bb.module.eval()
            with torch.inference_mode():
                for a in range(0, len(records), 256):
                    items = [bb.preprocess_item(reader.load(r)) for r in records[a : a + 256]]
                    bb.embed(bb.collate(items))
        n = len(records)
    else:
        Path(out).unlink(missing_ok=True)  # a fresh extraction every time (an existing cache would be up to date)
        workers = "auto" if task == "extract_auto" else 0
        res = tlkit.extract("fake/image", pattern, out, precision="fp32", workers=workers, batch_size=256,
                            limit=limit, shard=shard, overwrite=True, preprocess=preprocess)  # fmt: skip
        n = res.n_computed
        loop = res.items_per_s  # the extraction loop alone (model loading and the final file excluded)
        phases["loop"] = res.compute_seconds
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the listing processes and loader workers, all joined
    children_cpu = children.ru_utime + children.ru_stime
    # read / bare: the listing, then the items; extract: the loop, and the rest (listing, model, final file)
    phases["items" if task in ("read", "bare") else "outside_loop"] = seconds - sum(phases.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"items": n, "seconds": seconds, "cpu_seconds": cpu, "items_per_s": n / seconds,
            "items_per_cpu_s": n / cpu, "peak_rss_mb": rss / 2**20, "loop_items_per_s": loop,
            "phase_seconds": phases, "children_cpu_seconds": children_cpu,
            "cores_busy": (cpu + children_cpu) / seconds}  # fmt: skip


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})  # fmt: skip
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(args[0], args[3], args[4], json.dumps(result), file=sys.stderr, flush=True)  # partial results as they come
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of read / bare / extract")
    ap.add_argument("--input-size", type=int, default=8, help="fake/image input side (the images are 8x8)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-merge", action="store_true", help="skip the 8 parts and the merges")
    ap.add_argument("--child", nargs=6, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        task, pattern, out, limit, shard, size = args.child
        print(json.dumps(child(task, pattern, out, int(limit) or None, None if shard == "-" else shard, int(size))))
        return
    size = str(args.input_size)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        pattern = make_shards(work / "shards", args.n)
        made = time.perf_counter() - t0
        runs: dict[str, list[dict[str, Any]]] = {"read": [], "bare": [], "extract": [], "extract_auto": []}
        for _ in range(args.reps):  # interleaved, so a change in the machine's load hits all three alike
            for task in runs:
                runs[task].append(run_child(task, pattern, str(work / "full.h5"), "0", "-", size))
        tenth = max(1, -(-args.n // 10 // PER_SHARD))  # the first shards: a dataset of N/10 items, listed as such
        small_pattern = pattern.replace(f"{{00000..{-(-args.n // PER_SHARD) - 1:05d}}}", f"{{00000..{tenth - 1:05d}}}")
        small = run_child("extract", small_pattern, str(work / "small.h5"), "0", "-", size)
        full = runs["extract"][-1]
        result: dict[str, object] = {
            "n": args.n,
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "input_size": args.input_size,
            "make_shards_s": made,
            "runs": runs,
        }
        for key in ("items_per_s", "items_per_cpu_s"):
            r, b, e, ea = (median(runs[t], key) for t in ("read", "bare", "extract", "extract_auto"))
            result[key] = {"read": r, "bare": b, "extract": e, "extract_auto": ea, "extract_over_read": e / r,
                           "extract_over_bare": e / b, "extract_auto_over_read": ea / r}  # fmt: skip
        by_rep = [a["items_per_s"] / r["items_per_s"] for a, r in zip(runs["extract_auto"], runs["read"], strict=True)]
        result["extract_auto_over_read_by_repetition"] = by_rep  # each pair from the same repetition
        result["phase_seconds_median"] = {
            t: {k: float(statistics.median(r["phase_seconds"][k] for r in rs)) for k in rs[0]["phase_seconds"]}
            for t, rs in runs.items()
        }
        result["cpu_seconds_median"] = {  # this process and its children: what the task cost the machine
            t: float(statistics.median(r["cpu_seconds"] + r["children_cpu_seconds"] for r in rs))
            for t, rs in runs.items()
        }
        result["cores_busy_median"] = {t: median(rs, "cores_busy") for t, rs in runs.items()}
        result["extract_tenth"] = small
        result["peak_rss_ratio"] = max(r["peak_rss_mb"] for r in runs["extract"]) / small["peak_rss_mb"]
        result["peak_rss_mb"] = {"extract": max(r["peak_rss_mb"] for r in runs["extract"]),
                                 "extract_tenth": small["peak_rss_mb"]}  # fmt: skip
        result["extract_full"] = full
        if not args.skip_merge:
            parts = []
            for i in range(8):
                part = work / f"part{i}.h5"
                run_child("extract", pattern, str(part), "0", f"{i}/8", size)
                parts.append(part)
            import tlkit

            times: dict[str, list[tuple[float, float]]] = {"copy": [], "virtual": []}
            for _ in range(3):  # alternated; the minimum of each (wall and CPU) is what the machine allowed
                for kind in times:
                    out = work / f"{kind}.h5"
                    out.unlink(missing_ok=True)
                    t0, c0 = time.perf_counter(), time.process_time()
                    tlkit.merge_caches(parts, out, virtual=kind == "virtual")
                    times[kind].append((time.perf_counter() - t0, time.process_time() - c0))
            copy_s, virtual_s = (min(w for w, _ in times[k]) for k in ("copy", "virtual"))
            copy_cpu, virtual_cpu = (min(c for _, c in times[k]) for k in ("copy", "virtual"))
            result.update(merge_copy_s=copy_s, merge_virtual_s=virtual_s, virtual_speedup=copy_s / max(virtual_s, 1e-9),
                          merge_copy_cpu_s=copy_cpu, merge_virtual_cpu_s=virtual_cpu,
                          virtual_speedup_cpu=copy_cpu / max(virtual_cpu, 1e-9))  # fmt: skip
        result["load_avg_1m_end"] = os.getloadavg()[0]
    report(result, args.json)


if __name__ == "__main__":
    main()
