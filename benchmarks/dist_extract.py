"""Scaling out: ``tlkit extract`` in one process against ``torchrun --nproc-per-node 2 -m tlkit extract``.

Same backbone (a seeded random initialisation saved to a weights file: no download, and every process loads the
same network, which ``--weights none`` does not promise), same photo-like JPEGs, same precision and batch size.
The single process uses torch's default threads and ``--workers auto``; torchrun gives each of its ranks one
thread (``OMP_NUM_THREADS=1``) and splits the loader workers between them, so both use every core. Runs alternate
A B A B, after one warm-up pair; times are wall-clock seconds of the whole command (start-up, model load,
extraction, and for torchrun the merge of the two parts), medians over ``--reps``. Both caches are checked to hold
the same ids in the same order. The last line is the 2-process/1-process time ratio.

    python benchmarks/dist_extract.py                             # timm/resnet18, 256 JPEGs 320x240, 3 reps
    python benchmarks/dist_extract.py --n 512 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _extract_data import machine, photo_folder


def seeded_weights(arch: str, path: Path) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def fresh(out: Path) -> None:
    """Every run computes: no cache, work folder or parts left from the previous one."""
    for p in (out, out.with_name(out.name + ".work"), out.with_name(out.name + ".shards")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def run(cmd: list[str]) -> tuple[float, dict]:
    fresh(Path(cmd[cmd.index("-o") + 1]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    out = res.stdout
    return wall, json.loads(out[out.index("{") : out.rindex("}") + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet18", help="a timm architecture")
    ap.add_argument("--n", type=int, default=256, help="images")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tlkit-bench-dist")
    args = ap.parse_args()

    data = photo_folder(args.workdir / f"photos{args.n}", args.n, size=(320, 240))
    weights = seeded_weights(args.arch, args.workdir / f"{args.arch}-seed0.safetensors")
    common = [f"timm/{args.arch}", str(data), "--weights", str(weights), "--precision", args.precision,
              "--batch-size", args.batch_size, "--quiet", "--json"]  # fmt: skip
    one = args.workdir / "one.h5"
    many = args.workdir / "many.h5"
    cmd_one = [sys.executable, "-m", "tlkit", "extract", *common, "-o", str(one)]
    cmd_many = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                "-m", "tlkit", "extract", *common, "-o", str(many)]  # fmt: skip
    print(machine())
    print(f"timm/{args.arch}, {args.n} JPEGs 320x240, batch {args.batch_size}, {args.precision}")
    run(cmd_one)  # warm-up: page cache, compiled kernels
    run(cmd_many)
    times: dict[str, list[float]] = {"1 process": [], f"{args.nproc} processes": []}
    rates: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(args.reps):
        for name, cmd in (("1 process", cmd_one), (f"{args.nproc} processes", cmd_many)):
            wall, res = run(cmd)
            times[name].append(wall)
            rates[name].append(res["items_per_s"])
    # the two caches must be the same rows; values agree to float tolerance (oneDNN may pick other kernels
    # for one thread than for two)
    import h5py
    import numpy as np

    with h5py.File(one) as a, h5py.File(many) as b:
        assert list(a["ids"].asstr()[()]) == list(b["ids"].asstr()[()])
        diff = float(np.abs(a["features"][()] - b["features"][()]).max())
    print(f"same ids and order; max |difference| of features {diff:.2e}")
    print("| run | wall s (median) | items/s in the loop (median) |")
    print("|---|---|---|")
    for name in times:
        print(f"| {name} | {statistics.median(times[name]):.1f} | {statistics.median(rates[name]):.1f} |")
    ratio = statistics.median(times[f"{args.nproc} processes"]) / statistics.median(times["1 process"])
    print(f"| **{args.nproc}-process / 1-process time** | **{ratio:.2f}** | |")


if __name__ == "__main__":
    main()
