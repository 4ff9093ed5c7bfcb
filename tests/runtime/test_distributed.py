"""Scaling out on torch.distributed, with real ``torchrun`` subprocesses on the CPU (gloo backend).

- ``torchrun --nproc-per-node 2 -m tlkit extract`` gives the cache a single process gives, row for row;
- ``--shard I/3`` jobs run as separate processes and merged with ``tlkit cache merge`` give it too, and merging
  overlapping, incomplete or mismatched parts is refused with a clear message;
- killing one rank mid-run, then rerunning, resumes that rank's part and ends with the same cache;
- a 2-process DDP fine-tune with phases (head, then ``last:1``) matches the single-process run with the same global
  batch, keeps frozen blocks bit for bit, and resumes after ``kill -9`` to the very same weights;
- ``tlkit train`` streams a cache larger than its memory budget from the HDF5 file.

``python -m torch.distributed.run`` is torchrun run by this interpreter; ``--standalone`` picks a free port, so
tests running side by side do not collide.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _extract_helpers import CHILD_ENV, assert_same_cache, one_thread, run_cli, write_images
from safetensors.torch import load_file

import tlkit
from tlkit.cache import FeatureCache, merge_caches, verify_cache, work_dir_for
from tlkit.errors import CacheError, FingerprintMismatchError

pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

#: Small windows, so every shard commits several segments (a kill lands mid-shard).
EXTRACT = ["--precision", "fp32", "--workers", "0", "--batch-size", "4", "--commit-rows", "4"]
EXTRACT_API = {"precision": "fp32", "workers": 0, "batch_size": 4, "commit_rows": 4}
FINETUNE = [
    "--schedule", "head:1,last:1:4", "--batch-size", "8", "--workers", "0", "--precision", "fp32",
    "--head", "linear", "--lr", "1e-2", "--backbone-lr-ratio", "0.5", "--seed", "1", "--val-split", "0.2",
    "--ema", "0.9", "-q",
]  # fmt: skip
FINETUNE_API = {
    "schedule": "head:1,last:1:4", "batch_size": 8, "workers": 0, "device": "cpu", "precision": "fp32",
    "head": "linear", "lr": 1e-2, "backbone_lr_ratio": 0.5, "seed": 1, "val_split": 0.2, "ema": 0.9,
}  # fmt: skip
ENV = {**CHILD_ENV, "HF_HUB_OFFLINE": "1", "TLKIT_DIST_TIMEOUT": "120"}


def _torchrun(*args: object, n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "tlkit", *map(str, args)]  # fmt: skip


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts its workers in their own sessions, so
    killing its process group alone would leave them running)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker process with ``RANK=rank`` among torchrun's children."""
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    images = write_images(root / "imgs", classes=3, per_class=30, size=(32, 32))
    (images / "class_1" / "img_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # a skip in the middle
    return images


@pytest.fixture(scope="module")
def single(images, tmp_path_factory) -> Path:
    """The single-process cache every distributed variant must equal."""
    out = tmp_path_factory.mktemp("single") / "single.h5"
    with one_thread():
        tlkit.extract("fake/image", images, out, **EXTRACT_API)
    return out


# -- extraction ----------------------------------------------------------------------------------------------------
def test_torchrun_extract_equals_single_process(images, single, tmp_path):
    out = tmp_path / "dist.h5"
    proc = _run(_torchrun("extract", "fake/image", images, "-o", out, *EXTRACT, "--json"))
    res = _json(proc.stdout)
    assert proc.stdout.count('"path"') == 1  # only rank 0 reports
    assert res["status"] == "created" and res["items"] == 90 and res["skipped"] == 1
    assert res["computed"] == 90  # both ranks' items (the bad one is not computed)
    assert_same_cache(out, single)
    assert verify_cache(out).ok
    assert not (tmp_path / "dist.h5.shards").exists()  # the parts are gone once merged
    with FeatureCache(out) as fc:
        assert fc.meta.get("shard") is None and len(fc.meta["merged_from"]) == 2


def test_shard_jobs_then_cache_merge_equal_single_process(images, single, tmp_path):
    parts = [tmp_path / f"part{i}.h5" for i in range(3)]
    procs = [
        _start([sys.executable, "-m", "tlkit", "extract", "fake/image", str(images), "-o", str(p), *EXTRACT,
                "--shard", f"{i}/3", "-q"])
        for i, p in enumerate(parts)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    merged = tmp_path / "merged.h5"
    out = run_cli("cache", "merge", parts[2], parts[0], parts[1], "-o", merged)  # any order
    assert "merged 3 parts" in out.stdout
    assert_same_cache(merged, single)

    # overlapping parts: the same shard twice, or a part beside the full cache
    res = run_cli("cache", "merge", parts[0], parts[0], parts[1], parts[2], "-o", tmp_path / "m1.h5", check=False)
    assert res.returncode == 1 and "given twice" in res.stderr
    res = run_cli("cache", "merge", single, merged, "-o", tmp_path / "m2.h5", check=False)
    assert res.returncode == 1 and "overlaps" in res.stderr and "disjoint" in res.stderr
    # incomplete: a shard missing
    res = run_cli("cache", "merge", parts[0], parts[1], "-o", tmp_path / "m3.h5", check=False)
    assert res.returncode == 1 and "missing shard(s) 2 of 3" in res.stderr
    # mismatched: a shard made with other settings, or cut with other windows
    with one_thread():
        fp16 = tmp_path / "fp16.h5"
        tlkit.extract("fake/image", images, fp16, shard="2/3", **{**EXTRACT_API, "store_dtype": "float16"})
        wide = tmp_path / "wide.h5"
        tlkit.extract("fake/image", images, wide, shard="2/3", **{**EXTRACT_API, "commit_rows": 8})
        short = tmp_path / "short.h5"
        tlkit.extract("fake/image", images, short, shard="2/3", limit=80, **EXTRACT_API)
    res = run_cli("cache", "merge", parts[0], parts[1], fp16, "-o", tmp_path / "m4.h5", check=False)
    assert res.returncode == 1 and "was not made like" in res.stderr and "store dtype" in res.stderr
    with pytest.raises(CacheError, match="different windows"):
        merge_caches([parts[0], parts[1], wide], tmp_path / "m5.h5")
    with pytest.raises(CacheError, match="different --limit"):  # the shards would leave items out
        merge_caches([parts[0], parts[1], short], tmp_path / "m6.h5")
    with pytest.raises(FingerprintMismatchError):
        merge_caches([parts[0], fp16], tmp_path / "m7.h5")
    assert not any((tmp_path / f"m{i}.h5").exists() for i in range(1, 8))


def test_killed_rank_resumes_its_part(images, single, tmp_path):
    out = tmp_path / "dist.h5"
    parts = tmp_path / "dist.h5.shards"
    proc = _start(_torchrun("extract", "fake/image", images, "-o", out, *EXTRACT, "-q"))
    victim = None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            work = work_dir_for(parts / "shard-00001-of-00002.h5")
            if work.is_dir() and any(work.glob("seg-*.h5")):  # rank 1 has committed some of its rows
                victim = _rank_pid(proc.pid, 1)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    break
            time.sleep(0.005)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    assert victim is not None, "rank 1 finished before it could be killed"
    assert proc.returncode != 0 and not out.exists()  # the job failed, and no cache pretends to be complete
    assert verify_cache(out).status in ("incomplete", "missing")

    res = _json(_run(_torchrun("extract", "fake/image", images, "-o", out, *EXTRACT, "--json")).stdout)
    assert res["reused"] > 0  # rows committed before the kill were not recomputed
    assert res["computed"] + res["reused"] + len(res["skipped_now"]) == 91  # each item once: 90 rows and 1 skip
    assert_same_cache(out, single)
    assert not parts.exists()


def test_torchrun_variables_make_extract_a_mode_not_a_fork(images, tmp_path, monkeypatch):
    """Rank 0 of 2 as torchrun describes it: the same tlkit.extract (and CLI command) resolves a 2-rank runtime. A
    --shard is refused before any process group is joined (rank 0 says so, rank 1 exits quietly); a union
    (TlkitEmbedder's cache) runs in this process."""
    from click.testing import CliRunner

    from tlkit.cli import cli
    from tlkit.errors import ConfigError

    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="shard 0/2 is for independent jobs; .* leave shard out"):
        tlkit.extract("fake/image", images, tmp_path / "s.h5", shard="0/2", **EXTRACT_API)
    args = ["extract", "fake/image", str(images), "-o", str(tmp_path / "s.h5"), *EXTRACT, "--shard", "0/2"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "Error: --shard 0/2 is for independent jobs" in res.output
    assert "leave --shard out" in res.output
    res = CliRunner().invoke(cli, args, env={"RANK": "1", "LOCAL_RANK": "1"})
    assert res.exit_code == 1 and res.output == ""
    with one_thread():
        union = tlkit.extract("fake/image", images, tmp_path / "u.h5", keep_existing=True, limit=8, **EXTRACT_API)
    assert union.status == "created" and union.n_items == 8 and not (tmp_path / "u.h5.shards").exists()


# -- fine-tuning ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ft_data(tmp_path_factory) -> Path:
    from tlkit.testing import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("ft") / "data", classes=3, per_class=40, size=(32, 32), seed=2)


def test_ddp_finetune_with_phases_matches_single_process_and_resumes(ft_data, tmp_path):
    ddp = tmp_path / "ddp"
    _run(_torchrun("finetune", "fake/image", ft_data, "-o", ddp, *FINETUNE))
    with one_thread():
        solo = tlkit.finetune("fake/image", ft_data, tmp_path / "solo", **FINETUNE_API)

    config = json.loads((ddp / "config.json").read_text())
    assert config["status"] == "complete"
    assert config["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 8, "per_rank_batch": 4}
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["unfrozen"] for r in rows] == [[], *[["stages.1"]] * 4]
    # frozen blocks are bit for bit the initial weights under DDP too; the unfrozen block trained
    initial = {f"backbone.{k}": v for k, v in tlkit.get_backbone("fake/image").module.state_dict().items()}
    final = load_file(ddp / "model.safetensors")
    assert all(
        torch.equal(final[k], initial[k]) for k in initial if k.startswith(("backbone.stem", "backbone.stages.0"))
    )
    assert not torch.equal(final["backbone.stages.1.0.weight"], initial["backbone.stages.1.0.weight"])
    # same global batch: the same quality as one process, within the noise of 24 validation items
    report = json.loads((ddp / "report.json").read_text())
    print(f"DDP accuracy {report['accuracy']:.3f}, single process {solo.report.accuracy:.3f}")
    assert report["n"] == solo.report.n == 24  # validation is split across the ranks, then gathered: every item once
    assert abs(report["accuracy"] - solo.report.accuracy) <= 0.25
    assert report["accuracy"] >= 0.75 and solo.report.accuracy >= 0.75
    assert abs(rows[-1]["train_loss"] - solo.history[-1]["train_loss"]) < 0.5

    # kill -9 the whole job after its first checkpoint, resume: the same weights as the uninterrupted run
    killed = tmp_path / "killed"
    proc = _start(_torchrun("finetune", "fake/image", ft_data, "-o", killed, *FINETUNE))
    metrics = killed / "metrics.jsonl"
    try:
        while proc.poll() is None:
            if metrics.is_file() and metrics.read_text().strip():  # epoch 1 is checkpointed, 4 to go
                _kill_tree(proc.pid)
                break
            time.sleep(0.002)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    assert proc.returncode != 0, "the run finished before it could be killed"
    time.sleep(0.5)
    assert not (killed / "model.safetensors").exists()  # nothing runs on behind our back
    _run(_torchrun("finetune", "fake/image", ft_data, "-o", killed, *FINETUNE, "--resume"))
    resumed = load_file(killed / "model.safetensors")
    assert resumed.keys() == final.keys()
    assert all(torch.equal(resumed[k], final[k]) for k in final)


def test_global_batch_must_divide_between_ranks(ft_data, tmp_path, monkeypatch):
    from tlkit.errors import ConfigError

    # rank 1 of 2 as torchrun would describe it: tlkit.finetune resolves a 2-process runtime and checks the batch
    # before it joins the process group
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="batch_size 7 is the global batch .* a multiple of 2"):
        tlkit.finetune("fake/image", ft_data, tmp_path / "odd", **{**FINETUNE_API, "batch_size": 7})
    assert not (tmp_path / "odd").exists()
    monkeypatch.setenv("TLKIT_DISTRIBUTED", "0")  # the escape hatch: back to one process per command
    with one_thread():
        result = tlkit.finetune(
            "fake/image", ft_data, tmp_path / "odd", **{**FINETUNE_API, "batch_size": 7, "schedule": "head:1"}
        )
    config = json.loads((result.run_dir / "config.json").read_text())
    assert "distributed" not in config and config["runtime"]["world_size"] == 1 and result.epochs_run == 1


# -- heads on a cache larger than memory -------------------------------------------------------------------------------
def test_train_streams_a_cache_larger_than_its_memory_budget(tmp_path, monkeypatch):
    import h5py

    from tlkit.heads.tables import FeatureSource, FeatureTable

    # A cache of 3,000 rows × 64 features (768 kB as float32) against a 64 kB budget: streamed in 250-row chunks.
    rng = np.random.default_rng(0)
    n, d, k = 3000, 64, 3
    y = rng.integers(0, k, n)
    centers = rng.normal(0, 1, (k, d)).astype(np.float32)
    X = centers[y] + rng.normal(0, 1.0, (n, d)).astype(np.float32)
    cache = tmp_path / "big.h5"
    _write_cache(cache, X, y, k)

    monkeypatch.setenv("TLKIT_MEMORY_BUDGET", "64K")
    with h5py.File(cache, "r") as f:
        src = FeatureSource("big", f["features"], y, [f"c{i}" for i in range(k)])
        table = FeatureTable(src, np.arange(n), torch.device("cpu"))
        assert not table.in_memory and table._x is None
        chunks = table._chunk_rows(32)
        assert chunks * d * 4 <= 64 * 1024 and n / chunks > 5  # several chunks, each within the budget
        got = torch.cat([x for x, _ in table.batches(32, generator=torch.Generator().manual_seed(0))])
        assert got.shape == (n, d) and not torch.equal(got, torch.from_numpy(X))  # shuffled ...
        assert torch.allclose(got.sum(0), torch.from_numpy(X).sum(0), atol=1e-2)  # ... but every row once

    # the CLI under the budget streams; the same training with the rows loaded reaches the same quality
    run_cli_env("train", cache, "-o", tmp_path / "streamed", "--head", "linear", "--epochs", "5",
                env={"TLKIT_MEMORY_BUDGET": "64K"})  # fmt: skip
    monkeypatch.delenv("TLKIT_MEMORY_BUDGET")
    with one_thread():
        loaded = tlkit.train_head(cache, tmp_path / "loaded", head="linear", epochs=5, in_memory=True)
    acc_s = json.loads((tmp_path / "streamed" / "report.json").read_text())["accuracy"]
    print(f"streamed accuracy {acc_s:.3f}, loaded {loaded.report.accuracy:.3f}")
    assert acc_s > 0.8 and abs(acc_s - loaded.report.accuracy) < 0.05


def run_cli_env(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m tlkit ARGS`` in a real subprocess, with extra environment variables."""
    proc = subprocess.run([sys.executable, "-m", "tlkit", *map(str, args)], capture_output=True, text=True,
                          timeout=240, env={**ENV, **(env or {})})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _write_cache(path: Path, X: np.ndarray, y: np.ndarray, k: int) -> None:
    """A feature cache written with plain h5py, in the documented format (docs/cache-format.md)."""
    import h5py

    meta = {
        "format": "tlkit-features", "format_version": 1, "complete": True, "class_names": [f"c{i}" for i in range(k)],
        "backbone": {"name": "fake/image", "weights": "none", "init_kwargs": {}, "spec": {}, "fingerprint": "f" * 16},
        "precision": "fp32", "store_dtype": "float32", "layers": [], "views": 0, "skipped": [], "key": {},
    }  # fmt: skip
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=X, chunks=(256, X.shape[1]))
        f.create_dataset("labels", data=y.astype(np.int64))
        f.create_dataset("ids", data=np.array([f"item{i}" for i in range(len(y))], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))  # fmt: skip
        f.attrs["tlkit"] = json.dumps(meta)
