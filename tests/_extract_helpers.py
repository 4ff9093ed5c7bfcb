"""Helpers shared by the extraction and cache tests: data makers, a CLI runner in a real subprocess, cache equality."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FP32 = ["--precision", "fp32"]
#: Subprocesses run single-threaded: on a shared 2-core machine, OpenMP threads of parallel tests fight each other.
CHILD_ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def write_images(
    root: Path, classes: int = 3, per_class: int = 8, size: tuple[int, int] = (36, 36), seed: int = 0
) -> Path:
    from tlkit.data.samples import make_image_folder

    return make_image_folder(root, classes=classes, per_class=per_class, size=size, seed=seed)


def write_texts(path: Path, n: int = 40, seed: int = 0) -> Path:
    """A CSV of two separable classes with texts of very different lengths (so bucketing reorders them)."""
    rng = np.random.default_rng(seed)
    words = {"animals": ["cat", "dog", "bird", "horse"], "vehicles": ["car", "bus", "train", "truck"]}
    lines = ["text,label"]
    for i in range(n):
        label = "animals" if i % 2 == 0 else "vehicles"
        body = " ".join(rng.choice(words[label], int(rng.integers(1, 30))))
        lines.append(f'"{body} {i}",{label}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: Any, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python -m tlkit ARGS`` in a real subprocess."""
    env = CHILD_ENV
    proc = subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tlkit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded (restored after): shared cores make OpenMP threads of parallel tests fight."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_cache(path: Path) -> dict[str, Any]:
    """Everything in a cache that must be equal between equivalent runs (run ids and timings excluded)."""
    with h5py.File(path, "r") as f:
        meta = json.loads(f.attrs["tlkit"])
        out: dict[str, Any] = {
            "ids": list(f["ids"].asstr()[()]),
            "labels": f["labels"][()],
            "features": f["features"][()],
            "layers": {k: v[()] for k, v in f["layers"].items()} if "layers" in f else {},
            "views": f["views"][()] if "views" in f else None,
        }
    out["class_names"] = meta["class_names"]
    out["skipped"] = sorted((s["id"], s["reason"]) for s in meta["skipped"])
    out["checksums"] = meta["checksums"]
    out["complete"] = meta["complete"]
    return out


def assert_same_cache(a: Path, b: Path) -> None:
    """Same rows, same order, bit-identical values."""
    x, y = read_cache(a), read_cache(b)
    assert x["ids"] == y["ids"]
    assert np.array_equal(x["labels"], y["labels"])
    assert x["features"].dtype == y["features"].dtype
    assert np.array_equal(x["features"], y["features"])
    assert x["layers"].keys() == y["layers"].keys()
    for k in x["layers"]:
        assert np.array_equal(x["layers"][k], y["layers"][k])
    assert (x["views"] is None) == (y["views"] is None)
    if x["views"] is not None:
        assert np.array_equal(x["views"], y["views"])
    assert x["class_names"] == y["class_names"]
    assert x["skipped"] == y["skipped"]
    assert x["checksums"] == y["checksums"]
    assert x["complete"] is True and y["complete"] is True
