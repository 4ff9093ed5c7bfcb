"""Sweep timing: ``tlkit train --sweep`` (a grid of linear probes in one pass) against a loop over the same grid.

A: one ``tlkit.train_head(..., sweep=True)`` call training every (lr, weight decay) pair of the default grid
(7 x 5 = 35 probes) together. B: one ``tlkit.train_head(..., head="linear", lr=..., weight_decay=...)`` call per grid
cell, in the same process (the cheapest way a user could loop). Both run the same epochs on the same cache and write
complete run directories. Also shown: a single linear probe, the unit a sweep is measured against.

The cache defaults to the demo sample extracted with ``effnet/lite0`` at 160 px (800 training and 200 validation
images, 1280-d features). Runs alternate A B A B ... after a warm-up; figures are medians over ``--reps``. The last
line is the headline: the loop's time over the sweep's.

    python benchmarks/bench_sweep.py
    python benchmarks/bench_sweep.py --train my.h5 --val my_val.h5 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def demo_caches(work: Path, backbone: str) -> tuple[Path, Path]:
    from tlkit.demo import DATA, INPUT_SIZE
    from tlkit.extraction import extract
    from tlkit.host.api import get_backbone

    bb = get_backbone(backbone, preprocess={"input_size": [3, INPUT_SIZE, INPUT_SIZE]})
    out = []
    for split in ("train", "val"):
        path = work / f"{split}.h5"
        extract(bb, DATA / split, path)
        out.append(path)
    return out[0], out[1]


def main() -> None:
    from tlkit.heads import train_head
    from tlkit.heads.options import DEFAULT_LRS, DEFAULT_WDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, help="training cache (default: the demo sample, extracted)")
    parser.add_argument("--val", type=Path, help="validation cache")
    parser.add_argument("--backbone", default="effnet/lite0", help="backbone for the demo caches")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tlkit-sweep-") as tmp:
        work = Path(tmp)
        train, val = (args.train, args.val) if args.train else demo_caches(work, args.backbone)
        common = {"val": val, "epochs": args.epochs, "overwrite": True}

        def sweep() -> float:
            start = time.perf_counter()
            train_head(train, work / "sweep", sweep=True, **common)
            return time.perf_counter() - start

        def loop() -> tuple[float, float]:
            start, one = time.perf_counter(), 0.0
            for lr in DEFAULT_LRS:
                for wd in DEFAULT_WDS:
                    t = time.perf_counter()
                    train_head(train, work / "one", head="linear", lr=lr, weight_decay=wd, **common)
                    one = one or time.perf_counter() - t
            return time.perf_counter() - start, one

        sweep(), train_head(train, work / "one", head="linear", **common)  # warm-up
        a, b, single = [], [], []
        for rep in range(args.reps):
            a.append(sweep())
            total, one = loop()
            b.append(total)
            single.append(one)
            print(f"rep {rep + 1}: sweep {a[-1]:.2f} s   loop {b[-1]:.2f} s   one probe {one:.2f} s", flush=True)
    grid = len(DEFAULT_LRS) * len(DEFAULT_WDS)
    print(f"\n{'':40}{'median s':>10}")
    print(f"{f'A sweep, {grid} probes in one pass':40}{statistics.median(a):10.2f}")
    print(f"{f'B loop over the {grid} grid cells':40}{statistics.median(b):10.2f}")
    print(f"{'one linear probe':40}{statistics.median(single):10.2f}")
    print(f"sweep of {grid} probes ({args.epochs} epochs): B/A = {statistics.median(b) / statistics.median(a):.1f}x")


if __name__ == "__main__":
    main()
