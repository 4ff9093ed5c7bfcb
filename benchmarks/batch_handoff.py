"""How a batch crosses from a DataLoader worker to the main process: through shared memory or inline in the pipe.

Each DataLoader worker makes batches of one ``uint8`` tensor of a given size (a fresh tensor per batch, filled, as a
collate function makes one) wrapped in tlkit's extraction ``Batch``, and the main process receives them. Two ways,
alternated ``--reps`` times at each size, the rest identical:

- ``shared``: every tensor through shared memory (what PyTorch does by default: a ``/dev/shm`` file per storage,
  its descriptor passed over a socket);
- ``inline``: every tensor inside the pickled batch, through the worker's pipe (:mod:`tlkit.runtime.handoff`).

Printed per size: batches per second and CPU seconds per batch (main process and workers together) of each, and
``shared/inline`` ratios (above 1: inline is faster). :data:`tlkit.runtime.handoff.INLINE_BYTES` is chosen from
where the ratios cross 1.

    python benchmarks/batch_handoff.py --json handoff.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Any

from _extract_data import report

SIZES = (16 << 10, 64 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20, 16 << 20)


class Source:
    """Batches of one ``uint8`` tensor of ``nbytes`` (the batch sampler's index is the fill value)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __len__(self) -> int:
        return 1 << 30

    def __getitems__(self, idx: list[int]) -> Any:
        import torch

        from tlkit.extraction.loader import Batch

        b = Batch(positions=list(idx), bad=[], flags=__import__("collections").Counter(), size=len(idx))
        b.inputs = torch.empty(self.nbytes, dtype=torch.uint8).fill_(idx[0] % 251)
        b.share_memory()  # as tlkit's collate does in a worker
        return b


def one(nbytes: int, batches: int, workers: int, mode: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to receive ``batches`` batches of ``nbytes`` each, ``mode`` ``shared`` or
    ``inline``."""
    from torch.utils.data import DataLoader

    from tlkit.runtime import handoff

    handoff.INLINE_BYTES = -1 if mode == "shared" else 1 << 40  # the workers fork after this: they see it too
    loader = DataLoader(
        Source(nbytes),  # type: ignore[arg-type]
        batch_sampler=[[i] for i in range(batches)],
        num_workers=workers,
        collate_fn=lambda b: b,
        prefetch_factor=2,
    )

    def cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    total = 0
    it = iter(loader)
    for b in it:
        total += int(b.inputs[0])  # touch the data
    wall = time.perf_counter() - t0
    del it  # the workers exit and are waited for: their CPU time is counted
    return wall, cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=256 << 20, help="data per size and way (sets the batch count)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for nbytes in SIZES:
        batches = max(64, min(2000, args.bytes // nbytes))
        runs: dict[str, list[tuple[float, float]]] = {"shared": [], "inline": []}
        for _ in range(args.reps):
            for mode in runs:
                runs[mode].append(one(nbytes, batches, args.workers, mode))
        row: dict[str, Any] = {"bytes": nbytes, "batches": batches}
        for mode, rs in runs.items():
            row[f"{mode}_batches_per_s"] = batches / statistics.median(w for w, _ in rs)
            row[f"{mode}_cpu_ms_per_batch"] = 1000 * statistics.median(c for _, c in rs) / batches
        row["wall_ratio_shared_over_inline"] = row["inline_batches_per_s"] / row["shared_batches_per_s"]
        row["cpu_ratio_shared_over_inline"] = row["shared_cpu_ms_per_batch"] / row["inline_cpu_ms_per_batch"]
        print(row, flush=True)
        rows.append(row)
    report({"workers": args.workers, "reps": args.reps, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "sizes": rows}, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
