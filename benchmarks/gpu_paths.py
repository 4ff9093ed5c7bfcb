"""The CUDA paths of the extraction engine, checked on a real GPU (run by ``benchmarks/gpu_check.sh``).

Each check prints one line ``ok|FAIL name: detail``; the exit code is the number of failures.

- ``auto`` resolves to bf16 (or fp16), pinned memory and non-blocking copies are used, and features stay within
  cosine 0.99 of an fp32 CPU run;
- fp32 on the GPU matches fp32 on the CPU (allclose);
- fp16 runs;
- ``--batch-size auto`` backs off on a *real* out-of-memory (the GPU is filled first) and loses no batch;
- a keyed rerun on the GPU computes only the new items and gives the rows of an uninterrupted run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from _extract_data import machine, photo_folder

FAILS = []


def check(name: str):
    def wrap(fn):
        try:
            detail = fn()
            print(f"ok   {name}: {detail}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every check
            FAILS.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
        return fn

    return wrap


def main() -> int:
    import numpy as np
    import torch

    import tlkit

    print(f"# {machine()}")
    if not torch.cuda.is_available():
        print("FAIL no CUDA device")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="tlkit-gpu-"))
    data = photo_folder(tmp / "photos", 256)
    arch = "timm/resnet50"

    def run(out: str, **kw):
        return tlkit.extract(arch, data, tmp / out, weights="none", **kw)

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    run("cpu.h5", device="cpu", precision="fp32", batch_size=32)
    ref, _ = tlkit.load_features(tmp / "cpu.h5")

    @check("auto precision on cuda")
    def _():
        res = run("auto.h5", device="cuda")
        assert res.precision in ("bf16", "fp16"), res.precision
        c = cos(tlkit.load_features(tmp / "auto.h5")[0], ref)
        assert c.min() > 0.99, c.min()
        return f"{res.precision}, batch {res.batch_size}, {res.items_per_s:.0f} items/s, min cosine {c.min():.4f}"

    @check("fp32 cuda equals fp32 cpu")
    def _():
        run("fp32.h5", device="cuda", precision="fp32")
        X, _ = tlkit.load_features(tmp / "fp32.h5")
        err = float(np.abs(X - ref).max() / (np.abs(ref).max() + 1e-12))
        assert err < 1e-2, err  # TF32 convolutions may be on: tolerance, not equality
        return f"max relative error {err:.2e}"

    @check("fp16 on cuda")
    def _():
        res = run("fp16.h5", device="cuda", precision="fp16")
        c = cos(tlkit.load_features(tmp / "fp16.h5")[0], ref)
        assert c.min() > 0.99, c.min()
        return f"{res.items_per_s:.0f} items/s, min cosine {c.min():.4f}"

    @check("auto batch backs off on a real out-of-memory")
    def _():
        free, _total = torch.cuda.mem_get_info()
        hog = torch.empty(int(free - (1.5 * 2**30)), dtype=torch.uint8, device="cuda")  # leave ~1.5 GiB
        try:
            res = tlkit.extract(arch, data, tmp / "oom.h5", weights="none", device="cuda", precision="fp32",
                                batch_size="auto", preprocess={"input_size": [3, 448, 448]})  # fmt: skip
        finally:
            del hog
            torch.cuda.empty_cache()
        X, _ = tlkit.load_features(tmp / "oom.h5")
        assert X.shape[0] == 256
        return f"completed {X.shape[0]} items starting from batch {res.batch_size}"

    @check("incremental run on cuda equals an uninterrupted run")
    def _():
        from tlkit.cache.workdir import WorkDir

        run("full.h5", device="cuda", precision="fp32", commit_rows=32, batch_size=32)
        out = tmp / "part.h5"
        run("part.h5", device="cuda", precision="fp32", commit_rows=32, batch_size=32, limit=96)
        res = run("part.h5", device="cuda", precision="fp32", commit_rows=32, batch_size=32)
        A, _ = tlkit.load_features(out)
        B, _ = tlkit.load_features(tmp / "full.h5")
        assert res.n_computed == 256 - 96 and np.allclose(A, B, atol=1e-4), (res.n_computed, np.abs(A - B).max())
        assert not WorkDir(out).exists()
        return f"computed {res.n_computed} new of 256, max diff {np.abs(A - B).max():.2e}"

    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(FAILS)} failure(s)" + (f": {', '.join(FAILS)}" if FAILS else ""))
    return len(FAILS)


if __name__ == "__main__":
    sys.exit(main())
