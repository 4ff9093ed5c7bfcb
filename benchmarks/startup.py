"""Start-up: how long the commands that do not compute anything take, with tlkit's on-disk memos and without.

Each command runs in a fresh subprocess (``python -c`` running the CLI, which then reports the heavy libraries it
imported). A and B alternate, after a warm-up of each, and the table shows the median over the repetitions of the
wall time and of the CPU time (user + system, from ``getrusage``; steadier than the wall time on a loaded machine):

- **A, memos on** (the default): names are checked and listed from the name index, a backbone's description and an
  up-to-date rerun's fingerprint come from the description memo;
- **B, memos off** (``TLKIT_CACHE_DIR=``): the same code asking the model libraries, which is what every command
  did before the memos (import timm to check or describe a name, build the model to describe it).

The last line is the headline: the slowest command's median wall time with memos, against the goal of 2 s.

    python benchmarks/startup.py            # 5 repetitions
    python benchmarks/startup.py --reps 3 --importtime
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = """
import sys
from tlkit.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="tlkit")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("timm", "torchvision", "transformers", "torch") if m in sys.modules)
print("IMPORTED=" + ",".join(heavy), file=sys.stderr)
sys.exit(code if isinstance(code, int) else 1)
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commands(data: Path, cache: Path, out: Path) -> list[tuple[str, list[str], int, dict[str, str]]]:
    """``(label, argv, expected exit code, extra environment)`` of each command measured."""
    offline = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(out / "empty-hf-home")}
    return [
        ("tlkit backbones", ["backbones"], 0, {}),
        ("tlkit plugins", ["plugins"], 0, {}),
        ("tlkit backbones info effnet/lite0", ["backbones", "info", "effnet/lite0"], 0, {}),
        ("tlkit backbones info timm/resnet18", ["backbones", "info", "timm/resnet18"], 0, {}),
        ("unknown name (extract timm/resnt18)", ["extract", "timm/resnt18", str(data), "-o", str(out / "u.h5")], 1, {}),
        ("up-to-date rerun (extract effnet/lite0)", ["extract", "effnet/lite0", str(data), "-o", str(cache)], 0, {}),
        ("offline hub name (extract timm/resnet18)", ["extract", "timm/resnet18", str(data), "-o", str(out / "o.h5")],
         1, offline),
    ]  # fmt: skip


def run(argv: list[str], expect: int, env: dict[str, str]) -> tuple[float, float, str]:
    """One run: wall seconds, CPU seconds (user + system of the child) and the heavy libraries it imported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != expect:
        raise SystemExit(f"tlkit {' '.join(argv)} exited {proc.returncode}, expected {expect}:\n{proc.stderr[-2000:]}")
    marker = [line for line in proc.stderr.splitlines() if line.startswith("IMPORTED=")]
    return wall, cpu, marker[-1].removeprefix("IMPORTED=") if marker else "?"


def importtime(argv: list[str], env: dict[str, str], top: int = 5) -> str:
    """The heaviest top-level imports of one run (``python -X importtime``), cumulative microseconds."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE, *argv], capture_output=True, text=True,
                          env=env)  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if cumulative.isdigit() and not name.startswith(" ") and "." not in name.strip():
                rows.append((int(cumulative), name.strip()))
    rows.sort(reverse=True)
    return ", ".join(f"{name} {us / 1e6:.2f} s" for us, name in rows[:top])


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    python = platform.python_version()
    return f"{model or platform.processor()}, {os.cpu_count()} cores, Python {python}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each A/B pair (median reported)")
    parser.add_argument("--importtime", action="store_true", help="also show each command's heaviest imports")
    parser.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="tlkit-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    from tlkit.testing import make_image_folder

    data = make_image_folder(work / "images", classes=2, per_class=4)
    cache = work / "images.h5"
    base = {k: v for k, v in os.environ.items() if k not in ("TLKIT_PLUGINS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env_a = {**base, "TLKIT_CACHE_DIR": str(work / "memo")}
    env_b = {**base, "TLKIT_CACHE_DIR": ""}
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    run(["extract", "effnet/lite0", str(data), "-o", str(cache), "--workers", "0"], 0, env_a)  # the cache reruns

    table = []
    for label, argv, expect, extra in commands(data, cache, work):
        a_env, b_env = {**env_a, **extra}, {**env_b, **extra}
        run(argv, expect, a_env)  # warm-up: fills the memos, and the OS file cache for both
        run(argv, expect, b_env)
        a, b = [], []
        for _ in range(args.reps):
            a.append(run(argv, expect, a_env))
            b.append(run(argv, expect, b_env))
        row = {
            "label": label,
            "a_wall": statistics.median(r[0] for r in a),
            "a_cpu": statistics.median(r[1] for r in a),
            "b_wall": statistics.median(r[0] for r in b),
            "b_cpu": statistics.median(r[1] for r in b),
            "a_libs": a[-1][2] or "-",
            "b_libs": b[-1][2] or "-",
        }
        if args.importtime:
            row["a_imports"] = importtime(argv, a_env)
        table.append(row)
        print(f"  measured: {label}", file=sys.stderr, flush=True)

    print(f"load average after: {os.getloadavg()[0]:.2f}; {args.reps} repetitions, medians")
    head = f"{'command':42} {'memos: wall':>12} {'cpu':>6} {'imports':20} {'no memos: wall':>15} {'cpu':>6} {'imports'}"
    print(head)
    for r in table:
        print(f"{r['label']:42} {r['a_wall']:11.2f}s {r['a_cpu']:5.2f}s {r['a_libs']:20} {r['b_wall']:14.2f}s "
              f"{r['b_cpu']:5.2f}s {r['b_libs']}")  # fmt: skip
        if "a_imports" in r:
            print(f"{'':42} heaviest imports with memos: {r['a_imports']}")
    worst = max(table, key=lambda r: r["a_wall"])
    speedup = statistics.median(r["b_wall"] / r["a_wall"] for r in table)
    verdict = "under" if worst["a_wall"] < 2.0 else "OVER"
    print(f"slowest with memos: {worst['label']} {worst['a_wall']:.2f} s ({verdict} the 2 s goal); "
          f"median speed-up from the memos {speedup:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
