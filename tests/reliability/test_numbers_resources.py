"""Numbers are checked and resources run out cleanly (issue 13, points 10-12), through the CLI in real subprocesses.

- NaN/Inf features: refused by ``train`` (final features and ``--layer auto``), named by ``predict``, skipped (named)
  by extraction when a backbone produces them.
- Label indices outside the class names: a one-line error naming the cache, the rows and the count.
- CPU out-of-memory under a real address-space limit (``RLIMIT_AS``): ``--batch-size auto`` backs off, a fixed size
  that does not fit is a one-line error naming ``--batch-size``.
- A file-size limit (``RLIMIT_FSIZE``) with DataLoader workers: a one-line error, not a worker traceback.
- A cache whose writer is alive is reported as being written (pid, host), not as interrupted.
- A run that fails at start leaves no stale ``.work`` that would refuse the corrected command.
"""

from __future__ import annotations

import csv
import importlib.util
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _extract_helpers import CHILD_ENV, run_cli, write_images

import tlkit
from tlkit.cache import work_dir_for
from tlkit.extraction.forward import NONFINITE_REASON
from tlkit.testing.fake import FakeImageBackbone

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

FP32 = ["--precision", "fp32", "--workers", "0", "-q"]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: a non-zero exit, ``Error: ...`` on one line, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("numbers")
    images = write_images(root / "imgs", classes=3, per_class=8, size=(32, 32))
    cache = root / "good.h5"
    run_cli("extract", "fake/image", images, "-o", cache, "--layers", "all", *FP32)
    run = root / "run"
    run_cli("train", cache, "-o", run, "--head", "linear", "--epochs", "3")
    return {"root": root, "images": images, "cache": cache, "run": run}


def _copy_with(src: Path, dst: Path, dataset: str, row: int, value: float) -> str:
    """A copy of a real cache with one value written into ``dataset`` at ``row`` (h5py ``r+``); the row's id."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f[dataset][row, 0] = value
        return f["ids"].asstr()[row]


# -- NaN / Inf -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "how", [["--head", "linear"], ["--head", "auto"], ["--sweep"]], ids=["linear", "auto", "sweep"]
)
def test_train_refuses_nan_features_in_one_line(data: dict[str, Path], tmp_path: Path, how: list[str]) -> None:
    bad = tmp_path / "nan.h5"
    item = _copy_with(data["cache"], bad, "features", 5, float("nan"))
    err = one_line_error(run_cli("train", bad, "-o", tmp_path / "run", *how, check=False))
    assert str(bad) in err and "1 row(s) of features hold NaN or Inf" in err and item in err
    assert "tlkit cache verify" in err and "re-extract" in err
    assert not (tmp_path / "run" / "head.safetensors").exists()


def test_layer_auto_refuses_inf_in_a_cached_layer(data: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "inf.h5"
    item = _copy_with(data["cache"], bad, "layers/stem", 2, float("inf"))
    err = one_line_error(run_cli("train", bad, "-o", tmp_path / "run", "--layer", "auto", check=False))
    assert str(bad) in err and "NaN or Inf" in err and item in err


def test_predict_names_items_with_nan_features_instead_of_writing_nan(data: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "nan.h5"
    item = _copy_with(data["cache"], bad, "features", 0, float("nan"))
    out = tmp_path / "preds.csv"
    run_cli("predict", data["run"], bad, "-o", out)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 23 and item not in {r["id"] for r in rows}
    assert "nan" not in out.read_text(encoding="utf-8").lower()
    preds = tlkit.predict(data["run"], bad)
    assert (item, preds.skipped[-1][1]) in preds.skipped and "NaN/Inf" in preds.skipped[-1][1]
    assert np.isfinite(preds.probabilities).all()


class WhiteIsNaN(FakeImageBackbone):
    """A backbone that produces NaN for an all-white image (its normalised pixels are all 2.0)."""

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        out = super().embed(batch)
        white = (batch.flatten(1) == 2.0).all(dim=1)
        return torch.where(white[:, None], torch.full_like(out, float("nan")), out)


def test_extraction_skips_rows_a_backbone_made_nan_and_names_them(data: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "imgs"
    shutil.copytree(data["images"], images)
    Image.new("RGB", (32, 32), (255, 255, 255)).save(images / "class_1" / "white.png")
    out = tmp_path / "c.h5"
    res = tlkit.extract(WhiteIsNaN("fake/image"), images, out, precision="fp32", workers=0, batch_size=4)
    assert ("class_1/white.png", NONFINITE_REASON) in [(s.id, s.reason) for s in res.skipped_now]
    assert res.n_items == 24 and res.n_skipped == 1
    with tlkit.FeatureCache(out) as fc:
        assert "class_1/white.png" not in fc.ids and np.isfinite(fc.features[()]).all()
        assert fc.skipped == [{"id": "class_1/white.png", "reason": NONFINITE_REASON, "stamp": fc.skipped[0]["stamp"]}]
    assert tlkit.verify_cache(out).ok


# -- label indices ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [7, -5])
def test_label_index_out_of_range_is_one_line(data: dict[str, Path], tmp_path: Path, value: int) -> None:
    bad = tmp_path / "labels.h5"
    shutil.copy(data["cache"], bad)
    with h5py.File(bad, "r+") as f:
        f["labels"][3] = value
        f["labels"][9] = value
        item = f["ids"].asstr()[3]
    err = one_line_error(run_cli("train", bad, "-o", tmp_path / "run", check=False))
    assert str(bad) in err and "2 label index(es) outside -1..2" in err and f"{item}: {value}" in err
    err = one_line_error(run_cli("evaluate", data["run"], bad, check=False))
    assert str(bad) in err and "label index(es)" in err


# -- a live writer, a failed start -----------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys
    from tlkit.cache import cache_lock
    from tlkit.cache.workdir import WorkDir

    with cache_lock(sys.argv[1]):
        WorkDir(sys.argv[1]).start({"format": "tlkit-work", "version": 1, "run_id": "x", "todo": 24})
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
    """
)


def test_a_cache_being_written_is_named_with_its_writer(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "busy.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=CHILD_ENV,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        who = f"being written by a live tlkit process (pid {holder.pid} on host"
        for args in (("cache", "info", out), ("train", out, "-o", tmp_path / "run")):
            err = one_line_error(run_cli(*args, check=False))
            assert who in err and "wait for it to finish" in err and "rerun" not in err
        rep = run_cli("cache", "verify", out, "--json", check=False)
        assert who in rep.stdout and "Traceback" not in rep.stderr
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash would: the kernel drops the lock
        holder.wait(timeout=60)
    err = one_line_error(run_cli("cache", "info", out, check=False))
    assert "interrupted" in err and "rerun the same tlkit extract command to resume" in err


def test_a_failed_start_leaves_no_stale_work_folder(data: dict[str, Path], tmp_path: Path) -> None:
    weights = tmp_path / "broken.safetensors"
    weights.write_bytes(b"not a safetensors file")
    out = tmp_path / "c.h5"
    one_line_error(
        run_cli("extract", "fake/image", data["images"], "-o", out, "--weights", weights, *FP32, check=False)
    )
    assert not out.exists() and not work_dir_for(out).exists()
    done = run_cli("extract", "fake/image", data["images"], "-o", out, *FP32)  # the corrected command is not refused
    assert "24 items" in done.stdout


# -- resources -------------------------------------------------------------------------------------------------
def test_file_size_limit_with_workers_is_one_line(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", classes=3, per_class=24, size=(32, 32))
    out = tmp_path / "c.h5"
    limit = 100_000  # a batch of 32 decoded images (32 x 3 x 32 x 32 floats) does not fit in one /dev/shm file

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "tlkit", "extract", "fake/image", str(images), "-o", str(out), "--precision", "fp32",
         "--workers", "2", "--batch-size", "32"],
        capture_output=True, text=True, preexec_fn=cap, env=CHILD_ENV, timeout=300,
    )  # fmt: skip
    err = one_line_error(proc)
    assert "shared memory" in err and "file-size limit" in err and "--workers 0" in err
    done = run_cli("extract", "fake/image", images, "-o", out, "--precision", "fp32", "--workers", "2")
    assert "72 items" in done.stdout


PEAK = textwrap.dedent(
    """
    import atexit, runpy, sys

    def peak(target):
        with open("/proc/self/status") as fh:
            kb = [line.split()[1] for line in fh if line.startswith("VmPeak:")][0]
        with open(target, "w") as out:
            out.write(kb)

    atexit.register(peak, sys.argv[1])
    sys.argv = ["tlkit", *sys.argv[2:]]
    runpy.run_module("tlkit", run_name="__main__")
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to calibrate the limit")
@pytest.mark.skipif(importlib.util.find_spec("tlkit_effnet_lite") is None, reason="needs the effnet/lite0 example")
def test_cpu_out_of_memory_backs_off_with_auto_and_is_one_line_with_a_fixed_size(tmp_path: Path) -> None:
    """A real allocation failure: the address space is capped (``RLIMIT_AS``) a little above what a batch of 4
    needs, so a batch of 32 at 224 px genuinely cannot be allocated."""
    images = write_images(tmp_path / "imgs", classes=2, per_class=16, size=(48, 48))
    peak_file = tmp_path / "peak"

    def extract(out: str, batch: str, limit: int | None) -> subprocess.CompletedProcess[str]:
        def cap() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        return subprocess.run(
            [sys.executable, "-c", PEAK, str(peak_file), "extract", "effnet/lite0", str(images), "-o",
             str(tmp_path / out), "--batch-size", batch, *FP32],
            capture_output=True, text=True, preexec_fn=cap, env=CHILD_ENV, timeout=600,
        )  # fmt: skip

    ref = extract("ref.h5", "4", None)
    assert ref.returncode == 0, ref.stderr
    limit = int(peak_file.read_text()) * 1024 + (200 << 20)  # 200 MiB above batch 4; batch 32 needs ~500 more
    err = one_line_error(extract("fixed.h5", "32", limit))
    assert "out of memory at batch size 32 on cpu" in err and "--batch-size" in err
    auto = extract("auto.h5", "auto", limit)  # starts at 32 on the CPU, halves until it fits
    assert auto.returncode == 0, auto.stderr
    X, y = tlkit.load_features(tmp_path / "auto.h5")
    R, yr = tlkit.load_features(tmp_path / "ref.h5")
    assert len(X) == 32 and np.array_equal(y, yr)
    np.testing.assert_allclose(X, R, rtol=1e-4, atol=1e-5)


def test_memory_errors_are_recognised() -> None:
    from tlkit.runtime.batching import is_oom, resource_error, shared_memory_error

    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 1204224000 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert is_oom(cpu) and is_oom(MemoryError()) and not is_oom(RuntimeError("shape mismatch"))
    err = resource_error(cpu)
    assert err is not None and err.param == "batch_size" and "DefaultCPUAllocator" in str(err)
    shm = RuntimeError("unable to write to file </torch_123_456_0>: No space left on device (28)")
    assert shared_memory_error(shm) is not None and "/dev/shm is full" in str(shared_memory_error(shm))
    assert resource_error(RuntimeError("something else")) is None
