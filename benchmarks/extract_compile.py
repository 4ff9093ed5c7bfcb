"""When does ``tlkit extract --compile`` pay off? Eager against compiled extraction of the same photos, side by side.

Each run is ``tlkit.extract`` end to end in its own child process (a fresh ``torch.compile``, as a new command has),
alternating eager and compiled ``--reps`` times after one warm-up each. A compiled run reports the seconds its first
batch took (compilation included); the rest of its loop is the compiled speed. Inductor keeps compiled kernels in
an on-disk cache, so the first compiled run on a machine (``cold``, an empty cache directory) compiles from scratch
and later ones (``warm``) mostly load; both are reported. The break-even is the number of items at which the
compiled run's time, compilation included, equals the eager run's.

    python benchmarks/extract_compile.py                        # timm/resnet18 random init, 512 photos, 500x375
    python benchmarks/extract_compile.py --backbone effnet/lite0 --images 1024

Results go to docs/benchmarks.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _extract_data import machine, photo_folder


def child(backbone: str, data: str, out: str, compile_: bool, batch: int) -> dict[str, float]:
    import time

    import tlkit

    bb = tlkit.get_backbone(backbone, weights="none" if backbone.startswith("timm/") else "pretrained")
    t = time.perf_counter()
    res = tlkit.extract(bb, data, out, batch_size=batch, compile=compile_, overwrite=True)
    total = time.perf_counter() - t
    loop_rest = res.compute_seconds - res.compile_seconds
    return {"seconds": total, "items": res.n_computed, "compiled": res.compiled, "first_batch_s": res.compile_seconds,
            "compute_s": res.compute_seconds, "rest_items_per_s": (res.n_computed - batch) / loop_rest if res.compiled
            else res.items_per_s, "precision": res.precision}  # fmt: skip


def run(args: argparse.Namespace, data: Path, out: Path, compile_: bool, cache: Path) -> dict[str, float]:
    out.unlink(missing_ok=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--child", args.backbone, str(data), str(out), str(int(compile_)),
           str(args.batch_size)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(("compiled" if compile_ else "eager   "), json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="timm/resnet18")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        backbone, data, out, compile_, batch = args.child
        print(json.dumps(child(backbone, data, out, compile_ == "1", int(batch))))
        return
    with tempfile.TemporaryDirectory(prefix="tlkit-compile-") as tmp:
        root = Path(tmp)
        data = photo_folder(root / "photos", args.images)
        cache = root / "inductor-cache"
        cold = run(args, data, root / "c.h5", True, cache)  # an empty cache: compiled from scratch
        run(args, data, root / "e.h5", False, cache)  # warm-up
        eager, compiled = [], []
        for _ in range(args.reps):
            eager.append(run(args, data, root / "e.h5", False, cache))
            compiled.append(run(args, data, root / "c.h5", True, cache))
    e_total = statistics.median(r["seconds"] for r in eager)
    e_rate = statistics.median(r["rest_items_per_s"] for r in eager)
    c_rate = statistics.median(r["rest_items_per_s"] for r in compiled)
    warm_first = statistics.median(r["first_batch_s"] for r in compiled)
    c_total = statistics.median(r["seconds"] for r in compiled)
    per_item_saved = 1 / e_rate - 1 / c_rate

    def break_even(first_batch_s: float) -> str:
        # the compiled run's extra start-up: its first batch less what that batch costs eager
        extra = first_batch_s - args.batch_size / e_rate
        return f"{extra / per_item_saved:,.0f} items" if per_item_saved > 0 else "never (not faster)"

    print(f"# {machine()}")
    print(f"# {args.backbone}, {args.images} photos 500x375, batch {args.batch_size}, {eager[0]['precision']}, "
          f"{args.reps} reps, each run a fresh process")  # fmt: skip
    print(f"{'':<36}{'eager':>12}{'compiled':>12}")
    print(f"{'end to end, s (median)':<36}{e_total:>12.1f}{c_total:>12.1f}")
    print(f"{'loop after the first batch, items/s':<36}{e_rate:>12.1f}{c_rate:>12.1f}")
    print(f"{'first batch, s: cold cache':<36}{'':>12}{cold['first_batch_s']:>12.1f}")
    print(f"{'first batch, s: warm cache (median)':<36}{'':>12}{warm_first:>12.1f}")
    print(f"headline: compiled/eager loop speed = {c_rate / e_rate:.2f}; pays off after "
          f"{break_even(cold['first_batch_s'])} (cold cache), {break_even(warm_first)} (warm cache)")  # fmt: skip


if __name__ == "__main__":
    main()
