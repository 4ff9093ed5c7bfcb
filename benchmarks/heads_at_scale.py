"""Heads on a cache larger than memory (issue 18, point 4): ``tlkit train`` and ``tlkit.sklearn.partial_fit`` on a
5,000,000 x 768 float32 cache (15 GB) on a machine with less free memory than that.

1. The cache is written with tlkit's own cache writer: windows of rows committed as work-folder segments
   (:meth:`tlkit.cache.workdir.WorkDir.write_segment`, as extraction commits them) and assembled into one file with
   checksums (:func:`tlkit.cache.assemble.assemble`), then published atomically. Only the features are synthetic
   (well-separated class means plus noise), so it takes minutes, not a day of forward passes.
2. ``tlkit train CACHE`` with the default head (``auto``) is refused in one line naming the streaming heads.
3. ``tlkit train CACHE --head linear --epochs E`` streams the cache in chunks: wall time and peak RSS.
4. ``partial_fit(SGDClassifier(), CACHE)`` one pass: wall time and peak RSS.

Each step runs in its own process (peak RSS is its own). The cache is deleted at the end unless ``--keep``.

    nice -n 5 python benchmarks/heads_at_scale.py --workdir /data/tmp          # 5M x 768, about 31 GB of disk at peak
    python benchmarks/heads_at_scale.py --n 200000 --dim 64                      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _extract_data import report

SEGMENT_ROWS = 65536
CLASSES = 10


def write_cache(path: Path, n: int, dim: int, seed: int = 0) -> dict[str, float]:
    """A complete tlkit cache of ``n`` rows, written through the cache writer (segments, then assembly)."""
    import numpy as np

    from tlkit.cache import FORMAT_NAME, FORMAT_VERSION
    from tlkit.cache.assemble import AssemblyPlan, assemble
    from tlkit.cache.format import timestamp
    from tlkit.cache.workdir import SegmentData, WorkDir
    from tlkit.data.records import PackedStrings
    from tlkit.fileio import publish

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (CLASSES, dim)).astype(np.float32)
    work = WorkDir(path)
    work.start({"format": "tlkit-work", "version": 1, "run_id": "heads-at-scale", "key": {}, "window": SEGMENT_ROWS,
                "todo": n, "target": path.name})  # fmt: skip
    labels = np.empty(n, np.int64)
    sources, src, rows = [], [], []
    for seq, a in enumerate(range(0, n, SEGMENT_ROWS)):
        m = min(SEGMENT_ROWS, n - a)
        y = rng.integers(0, CLASSES, m)
        x = centers[y] + rng.standard_normal((m, dim), dtype=np.float32) * np.float32(2.0)
        ids = [f"item{i:08d}" for i in range(a, a + m)]
        sources.append(work.write_segment(seq, SegmentData(SEGMENT_ROWS, ids, [""] * m, x)))
        labels[a : a + m] = y
        src.append(np.full(m, seq, np.int32))
        rows.append(np.arange(m, dtype=np.int64))
    written = time.perf_counter() - t0
    ids = PackedStrings.of(f"item{i:08d}" for i in range(n))
    plan = AssemblyPlan(sources, np.concatenate(src), np.concatenate(rows), ids, labels, PackedStrings.of([""] * n))
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "complete": False, "run_id": "heads-at-scale",
        "created": timestamp(), "class_names": [f"class{c}" for c in range(CLASSES)], "precision": "fp32",
        "store_dtype": "float32", "layers": [], "views": 0, "skipped": [], "flags": {}, "key": {},
        "backbone": {"name": "synthetic", "weights": "none", "init_kwargs": {}, "spec": {"embed_dim": dim},
                     "fingerprint": "0" * 16},
        "dataset": {"root": "synthetic", "reader": "synthetic", "options": {}, "records": n},
    }  # fmt: skip
    tmp = work.path / "assembled.h5.tmp"
    assemble(tmp, plan, meta, layers=[], n_views=0, store_dtype="float32")
    publish(tmp, path)
    work.remove()
    return {"segments_s": written, "total_s": time.perf_counter() - t0, "bytes": path.stat().st_size}


def run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``cmd``; its wall time, exit status, last stderr line and peak RSS (this child's alone, from wait4)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return {"cmd": " ".join(cmd[2:]), "returncode": proc.returncode, "seconds": seconds,
            "peak_rss_mb": usage.ru_maxrss / 1024, "stderr_last": lines[-1] if lines else "",
            "stdout_tail": stdout.strip().splitlines()[-3:]}  # fmt: skip


PARTIAL_FIT = """
import json, resource, sys, time
from sklearn.linear_model import SGDClassifier
from tlkit.sklearn import iter_batches, partial_fit
t0 = time.perf_counter()
est = partial_fit(SGDClassifier(random_state=0), sys.argv[1], epochs=1)
fit_s = time.perf_counter() - t0
right = seen = 0
for X, y in iter_batches(sys.argv[2], shuffle=False):
    right += int((est.predict(X) == y).sum()); seen += len(y)
print(json.dumps({"fit_s": fit_s, "accuracy": right / seen,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(dir=args.workdir, prefix="heads-at-scale-"))
    result: dict[str, object] = {"n": args.n, "dim": args.dim, "cpus": os.cpu_count()}
    result["load_avg_1m"] = os.getloadavg()[0]
    try:
        with open("/proc/meminfo") as fh:
            result["mem_available_gb"] = [int(x.split()[1]) / 2**20 for x in fh if x.startswith("MemAvailable")][0]
        cache, val = tmp / "big.h5", tmp / "val.h5"
        result["write"] = write_cache(cache, args.n, args.dim)
        write_cache(val, 20_000, args.dim, seed=0)  # the same class means, other rows: a held-out set
        print("written", json.dumps(result["write"]), file=sys.stderr, flush=True)
        tl = [sys.executable, "-m", "tlkit"]
        env = {"OMP_NUM_THREADS": "1"}
        result["train_auto"] = run([*tl, "train", str(cache), "-o", str(tmp / "auto")], env)
        print("auto", json.dumps(result["train_auto"]), file=sys.stderr, flush=True)
        linear = ["--head", "linear", "--epochs", str(args.epochs), "--val", str(val), "--device", "cpu"]
        result["train_linear"] = run([*tl, "train", str(cache), "-o", str(tmp / "linear"), *linear], env)
        print("linear", json.dumps(result["train_linear"]), file=sys.stderr, flush=True)
        report_file = tmp / "linear" / "report.json"
        if report_file.exists():
            result["linear_val_accuracy"] = json.loads(report_file.read_text())["accuracy"]
        pf = run([sys.executable, "-c", PARTIAL_FIT, str(cache), str(val)], env)
        result["partial_fit"] = {**pf, **(json.loads(pf["stdout_tail"][-1]) if pf["stdout_tail"] else {})}  # type: ignore[index]
        print("partial_fit", json.dumps(result["partial_fit"]), file=sys.stderr, flush=True)
    finally:
        result["load_avg_1m_end"] = os.getloadavg()[0]
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report(result, args.json)


if __name__ == "__main__":
    main()
