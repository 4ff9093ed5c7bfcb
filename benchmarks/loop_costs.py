"""What a DataLoader worker of ``tlkit extract`` spends per item, against reading alone (issue 18).

In one process, over the same WebDataset shards of small PNGs (made here, as ``streams.py`` makes them), alternated
``--reps`` times after a warm-up, CPU time per item of:

- ``read``: the reader's ``load`` (list the shards once, then read and decode each item: "reading alone");
- ``read+preprocess``: that plus the backbone's ``preprocess_item``;
- ``worker``: what a worker runs for a batch, ``ItemSource.__getitems__`` (records, decoding, preprocessing) and
  ``Collate`` (the backbone's ``collate``), batches of ``--batch``.

The last line is the headline ratio: a worker's CPU per item over reading's. With the main process's forward pass
and writer on top, the extraction loop keeps up with reading alone only when the second core yields about that
ratio (``docs/benchmarks.md``, issue 18).

    python benchmarks/loop_costs.py --n 10000 --reps 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _extract_data import report
from streams import PER_SHARD, make_shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="items (8x8 PNGs with a cls member)")
    ap.add_argument("--reps", type=int, default=7, help="alternated repetitions (the median is reported)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    import tlkit
    from tlkit.extraction.loader import Collate, ItemSource
    from tlkit.host.readers import get_reader, open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        pattern = make_shards(Path(tmp) / "shards", args.n)
        ds = open_dataset(pattern, "image")
        records = ds.records
        reader = get_reader(ds)
        bb = tlkit.get_backbone("fake/image", preprocess={"input_size": [3, 8, 8]})
        bb.load()
        source = ItemSource(records, reader, bb, 0, 0)
        collate = Collate(bb, 0, None)
        n = len(records)
        plan = [list(range(a, min(a + args.batch, n))) for a in range(0, n, args.batch)]
        each = list(records)

        def read() -> None:
            for r in each:
                reader.load(r)

        def read_preprocess() -> None:
            for r in each:
                bb.preprocess_item(reader.load(r))

        def worker() -> None:
            for idx in plan:
                collate(source.__getitems__(idx))

        tasks: dict[str, Callable[[], None]] = {"read": read, "read+preprocess": read_preprocess, "worker": worker}
        times: dict[str, list[float]] = {k: [] for k in tasks}
        for f in tasks.values():  # warm-up: imports, first decodes, the files' pages
            f()
        for _ in range(args.reps):
            for k, f in tasks.items():
                c0 = time.process_time()
                f()
                times[k].append(time.process_time() - c0)
        us = {k: statistics.median(v) / n * 1e6 for k, v in times.items()}
        result: dict[str, object] = {
            "n": n,
            "shards": -(-args.n // PER_SHARD),
            "reps": args.reps,
            "cpu_us_per_item": us,
            "runs_s": times,
            "worker_over_read": us["worker"] / us["read"],
        }
        report(result, args.json)
        for k, v in us.items():
            print(f"{k:16s} {v:6.1f} CPU-us per item")
        print(f"worker / read: {us['worker'] / us['read']:.2f}")


if __name__ == "__main__":
    main()
