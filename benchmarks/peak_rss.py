"""Benchmark 4, memory is flat in N: peak RSS of ``tlkit extract`` at N = 1,000 against N = 20,000 items.

Each run is a real ``tlkit extract`` process under ``/usr/bin/time -v``; its "Maximum resident set size" is the peak
of the process (DataLoader workers are separate processes and are reported by time as the largest child). Small
images and a small model keep it to a few minutes; the engine's memory does not depend on the model beyond its
weights. Runs alternate small, large, small, large ...; figures are medians. The last line is the ratio (goal <= 1.1).

    python benchmarks/peak_rss.py                        # fake/image, 1k vs 20k 32x32 PNGs, 3 reps
    python benchmarks/peak_rss.py --backbone timm/resnet18 --size 64 --reps 1
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _extract_data import machine


def make_folder(root: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    if root.exists() and sum(1 for _ in root.rglob("*.png")) == n:
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class_{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB").save(d / f"{i:06d}.png")
    return root


def peak_rss_mb(backbone: str, data: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    out.unlink(missing_ok=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "tlkit", "extract", backbone, str(data), "-o", str(out),
           "--weights", "none", "--quiet", *extra]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", res.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return kb / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="fake/image")
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--extra", default="--precision fp32", help="more tlkit extract options")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time is missing: apt-get install -y time")
    tmp = Path(tempfile.mkdtemp(prefix="tlkit-bench4-"))
    small = make_folder(tmp / "small", args.small, args.size)
    large = make_folder(tmp / "large", args.large, args.size)
    rss: dict[int, list[float]] = {args.small: [], args.large: []}
    secs: dict[int, list[float]] = {args.small: [], args.large: []}
    for _ in range(args.reps):
        for n, d in ((args.small, small), (args.large, large)):
            mb, s = peak_rss_mb(args.backbone, d, tmp / f"{n}.h5", args.extra.split())
            rss[n].append(mb)
            secs[n].append(s)
    print(f"# {machine()}")
    print(f"# {args.backbone}, {args.size}x{args.size} PNG, options: {args.extra}, {args.reps} reps")
    print(f"{'N':>8}{'peak RSS MB':>14}{'wall s':>10}")
    for n in (args.small, args.large):
        print(f"{n:>8}{statistics.median(rss[n]):>14.1f}{statistics.median(secs[n]):>10.1f}")
    ratio = statistics.median(rss[args.large]) / statistics.median(rss[args.small])
    print(f"headline: peak RSS N={args.large} / N={args.small} = {ratio:.3f} (goal <= 1.1)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
