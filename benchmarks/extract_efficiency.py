"""Benchmark 1, extraction efficiency: ``tlkit extract`` end to end against a bare forward of the same model.

A: ``tlkit.extract(backbone, folder, cache)`` with an already-loaded backbone: scan, decode, preprocess in
   DataLoader workers, collate, transfer, forward, the writer thread's segment files, and the final cache file.
B: the same model, precision, memory format and batches, already decoded and preprocessed, in a bare loop
   (``Runner.forward``, which is ``backbone.embed`` under inference_mode and autocast, BatchNorms folded as in A).
C: B without BatchNorm folding (``Runner(fold=False)``), to show what folding gains.

Throughput is items/s. Runs alternate A B C A B C ... after one warm-up each; figures are medians of ``--reps``.
The last line is the headline ratio A/B (goal >= 0.90).

    python benchmarks/extract_efficiency.py                     # timm/resnet18 random init, 128 photos
    python benchmarks/extract_efficiency.py --device cuda --backbone timm/resnet50 --images 2048 --batch-size 256
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _extract_data import machine, photo_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="timm/resnet18")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", default="500x375", help="WxH of the generated JPEGs (default 500x375)")
    ap.add_argument(
        "--decode", default="reduced", choices=["reduced", "exact", "device"], help="tlkit's decoding (A only)"
    )
    ap.add_argument("--data", type=Path, default=None, help="image folder (default: generated photos)")
    args = ap.parse_args()

    import torch

    import tlkit
    from tlkit import open_dataset
    from tlkit.extraction.forward import Runner
    from tlkit.host.readers import get_reader
    from tlkit.runtime import RuntimeOptions, resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="tlkit-bench1-"))
    data = args.data or photo_folder(tmp / "photos", args.images, size=_size(args.size))
    runtime = resolve("extract", RuntimeOptions.of(args.device, args.precision, args.batch_size, args.workers))
    dev, prec = runtime.device, runtime.precision
    bb = tlkit.get_backbone(args.backbone, weights="none").load()
    ds = open_dataset(data, modality=bb.modality)
    n = len(ds)

    # B's input: the same batches, decoded and preprocessed once, outside the clock.
    reader = get_reader(ds)
    items = [bb.preprocess_item(reader.load(r)) for r in ds.records]
    batches = [bb.collate(items[a : a + args.batch_size]) for a in range(0, n, args.batch_size)]
    runner = Runner(bb, runtime)  # for its memory format only; each bare run opens its own (and folds, as A does)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_a() -> float:
        out = tmp / "a.h5"
        out.unlink(missing_ok=True)
        sync()
        t = time.perf_counter()
        res = tlkit.extract(bb, data, out, device=args.device, precision=prec, batch_size=args.batch_size,
                            workers=args.workers, decode=args.decode)  # fmt: skip
        sync()
        run_a.workers = res.workers  # type: ignore[attr-defined]
        return time.perf_counter() - t

    def bare(fold: bool) -> float:
        sync()
        t = time.perf_counter()
        with Runner(bb, runtime, fold=fold) as r:
            for b in batches:
                x = r.to_device(b)
                feats, _, _ = r.forward(x, [], int(x.shape[0]))
                feats.float().cpu()
            if fold:
                bare.folded = r.folded  # type: ignore[attr-defined]
        sync()
        return time.perf_counter() - t

    def run_b() -> float:
        return bare(True)

    def run_c() -> float:
        return bare(False)

    run_a(), run_b(), run_c()  # warm-up
    ta, tb, tc = [], [], []
    for _ in range(args.reps):
        ta.append(run_a())
        tb.append(run_b())
        tc.append(run_c())
    a, b, c = n / statistics.median(ta), n / statistics.median(tb), n / statistics.median(tc)
    print(f"# {machine()}")
    print(f"# {args.backbone} (random init), {n} images from {data}, batch {args.batch_size}, {prec}, "
          f"device {dev}, channels_last {runner.channels_last}, workers {args.workers} ({run_a.workers}), "
          f"{args.size} JPEGs, decode {args.decode}, {args.reps} reps")  # fmt: skip
    print(f"{'run':<34}{'median s':>10}{'items/s':>10}")
    print(f"{'A: tlkit.extract end to end':<34}{statistics.median(ta):>10.2f}{a:>10.1f}")
    print(f"{'B: bare forward, pre-decoded':<34}{statistics.median(tb):>10.2f}{b:>10.1f}")
    print(f"{'C: B without BatchNorm folding':<34}{statistics.median(tc):>10.2f}{c:>10.1f}")
    folded = bare.folded  # type: ignore[attr-defined]
    print(f"# BatchNorms folded into their convolutions in A and B: {folded}; folding gains B/C = {b / c:.2f}")
    print(f"headline: extraction efficiency A/B = {a / b:.2f} (goal >= 0.90)")
    shutil.rmtree(tmp, ignore_errors=True)


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


if __name__ == "__main__":
    main()
