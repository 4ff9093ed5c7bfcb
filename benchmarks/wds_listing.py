"""Benchmark: listing one WebDataset shard, tlkit's reader against the textbook ``tarfile`` loop.

A: ``WebDatasetReader._scan_shard``: every header through :mod:`tarfile`, samples grouped by key, the ``cls`` label
   read from the shard's file at the member's offset, plus tlkit's checks (ends inside the file, end-of-archive
   marker) and the packed entry per sample.
B: the textbook loop, which is how tlkit read labels before: ``for m in tarfile.open(...)``, samples grouped by key,
   the label through ``tf.extractfile(m).read()``.

One shard of ``--samples`` 8x8 PNGs with a ``cls`` member (as in ``benchmarks/streams.py``), one process; A and B
alternated, medians of ``--reps`` after a warm-up. The last line is the headline ratio B/A.

    python benchmarks/wds_listing.py
"""

from __future__ import annotations

import argparse
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from _extract_data import machine
from streams import make_shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()

    from tlkit.data.webdataset import WebDatasetReader, split_name

    with tempfile.TemporaryDirectory() as tmp:
        make_shards(Path(tmp), args.samples)
        shard = str(Path(tmp) / "00000.tar")
        reader = WebDatasetReader("image")

        def tlkit_listing() -> int:
            entries, _, _ = reader._scan_shard(shard, "00000.tar", ("png",), None)
            return len(entries)

        def textbook() -> int:
            n, key, members = 0, None, {}
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    parts = split_name(m.name)
                    if parts is None:
                        continue
                    if parts[0] != key:
                        if members:
                            n += 1
                        key, members = parts[0], {}
                    if parts[1] == "cls":
                        f = tf.extractfile(m)
                        members["label"] = f.read().decode() if f is not None else None
                    else:
                        members[parts[1]] = m
            return n + bool(members)

        assert tlkit_listing() == textbook() == args.samples
        times: dict[str, list[float]] = {"a": [], "b": []}
        for _ in range(args.reps):
            for key, fn in (("b", textbook), ("a", tlkit_listing)):
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
        a, b = statistics.median(times["a"]), statistics.median(times["b"])
        print(f"# {machine()}")
        print(f"# one shard of {args.samples} samples (png + cls), medians of {args.reps} alternated reps")
        print(f"{'run':<40}{'median s':>10}{'samples/s':>12}")
        print(f"{'B: textbook tarfile loop':<40}{b:>10.3f}{args.samples / b:>12,.0f}")
        print(f"{'A: tlkit WebDatasetReader listing':<40}{a:>10.3f}{args.samples / a:>12,.0f}")
        print(f"headline: tlkit's listing vs the textbook tarfile loop B/A = {b / a:.2f}x")


if __name__ == "__main__":
    main()
