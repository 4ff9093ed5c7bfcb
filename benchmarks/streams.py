"""Large-dataset readers at scale (issue 18): WebDataset shards of small images through the ``fake/image`` backbone.

Measures, each in its own child process (so peak memory is that run's own):

1. throughput: ``tlkit.extract`` of N items from the shards vs reading (and decoding) the same shards alone with
   the reader, both single-process (``workers=0``): the ratio is what extraction adds on top of the data;
2. peak memory (max RSS) of extracting N items vs N/10 items;
3. merging 8 parts (``--shard i/8``) into one cache: copying vs ``--virtual``.

    python benchmarks/streams.py --n 200000 --json out.json      # the issue's size
    nice -n 15 python benchmarks/streams.py --n 20000             # a reduced size on a busy machine

Results are recorded in docs/benchmarks.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PER_SHARD = 5000


def make_shards(root: Path, n: int) -> str:
    """``root/{00000..}.tar`` of ``n`` 8x8 PNGs with a ``cls`` member; returns the brace pattern."""
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
                Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
                for ext, data in (("png", buf.getvalue()), ("cls", str(k % 10).encode())):
                    info = tarfile.TarInfo(f"{k:08d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                k += 1
    return str(root / f"{{00000..{n_shards - 1:05d}}}.tar")


def child(task: str, pattern: str, out: str, limit: int | None, shard: str | None) -> dict[str, float]:
    """One measurement, run in this (child) process."""
    import torch

    torch.set_num_threads(1)
    import tlkit
    from tlkit.host.readers import get_reader, open_dataset

    t0 = time.perf_counter()
    if task == "read":
        ds = open_dataset(pattern, "image")
        reader = get_reader(ds)
        records = ds.records[:limit] if limit else ds.records
        for r in records:
            reader.load(r)
        n = len(records)
    else:
        res = tlkit.extract("fake/image", pattern, out, precision="fp32", workers=0, batch_size=256, limit=limit,
                            shard=shard, overwrite=True)  # fmt: skip
        n = res.n_computed
        loop = res.items_per_s  # the extraction loop alone (model loading and the final file excluded)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"items": n, "seconds": seconds, "items_per_s": n / seconds, "peak_rss_mb": rss / 2**20}
    return out if task == "read" else {**out, "loop_items_per_s": loop}


def run_child(*args: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})  # fmt: skip
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(args[0], args[3], args[4], result, file=sys.stderr, flush=True)  # partial results as they come
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        task, pattern, out, limit, shard = args.child
        print(json.dumps(child(task, pattern, out, int(limit) or None, None if shard == "-" else shard)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        pattern = make_shards(work / "shards", args.n)
        made = time.perf_counter() - t0
        read = run_child("read", pattern, "-", "0", "-")
        full = run_child("extract", pattern, str(work / "full.h5"), "0", "-")
        small = run_child("extract", pattern, str(work / "small.h5"), str(args.n // 10), "-")
        parts = []
        for i in range(8):
            part = work / f"part{i}.h5"
            run_child("extract", pattern, str(part), "0", f"{i}/8")
            parts.append(part)
        import tlkit

        t0 = time.perf_counter()
        tlkit.merge_caches(parts, work / "copy.h5")
        copy_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tlkit.merge_caches(parts, work / "virtual.h5", virtual=True)
        virtual_s = time.perf_counter() - t0
        result = {
            "n": args.n,
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "make_shards_s": made,
            "read_alone": read,
            "extract": full,
            "extract_over_read": full["items_per_s"] / read["items_per_s"],
            "extract_loop_over_read": full["loop_items_per_s"] / read["items_per_s"],
            "extract_tenth": small,
            "peak_rss_ratio": full["peak_rss_mb"] / small["peak_rss_mb"],
            "merge_copy_s": copy_s,
            "merge_virtual_s": virtual_s,
            "virtual_speedup": copy_s / max(virtual_s, 1e-9),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
