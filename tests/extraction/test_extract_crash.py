"""Crash safety with real processes: SIGKILL at random moments, a second writer, and a file-size limit.

Each run is ``python -m tlkit extract`` in its own process group; kills hit the whole group (main process and
DataLoader workers), as a scheduler's preemption would.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _extract_helpers import CHILD_ENV, assert_same_cache, run_cli, write_images

from tlkit.cache import verify_cache, work_dir_for

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

ARGS = ["--precision", "fp32", "--workers", "1", "--batch-size", "8", "--commit-rows", "8", "--layers", "all"]
KILLS = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    images = write_images(root / "imgs", classes=3, per_class=40, size=(32, 32))
    (images / "class_2" / "img_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    baseline = root / "baseline.h5"
    # The uninterrupted run; also times its work phase (plan written -> done) to spread the kills over it.
    proc = _start(images, baseline)
    assert _wait_for(work_dir_for(baseline) / "plan.json", proc)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return images, baseline, max(time.monotonic() - t0, 0.2)


def _start(images: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tlkit", "extract", "fake/image", str(images), "-o", str(out), *ARGS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=CHILD_ENV,
        **kwargs,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(data, tmp_path):
    images, baseline, work_seconds = data
    seed = int(os.environ.get("TLKIT_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    out = tmp_path / "c.h5"
    plan = work_dir_for(out) / "plan.json"
    outcomes = []
    for k in range(KILLS):
        out.unlink(missing_ok=True)
        shutil.rmtree(work_dir_for(out), ignore_errors=True)
        proc = _start(images, out)
        started_work = _wait_for(plan, proc)
        # stratified: kill k lands in the k-th slice of the work phase (the last slices cover the final write)
        delay = rng.uniform(k / KILLS, (k + 1) / KILLS) * work_seconds * 1.1
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
        # Whatever the moment, the cache path holds a complete cache or nothing; verify never sees a broken file.
        rep = verify_cache(out)
        assert rep.status in ("ok", "incomplete", "missing"), (seed, k, rep)
        if out.exists():
            assert rep.ok, (seed, k, rep)
        outcomes.append((round(delay, 2), rc, rep.status, started_work))
        res = run_cli("extract", "fake/image", images, "-o", out, *ARGS)
        assert res.returncode == 0
        assert_same_cache(out, baseline)
        assert not work_dir_for(out).exists()
    print(f"seed={seed} work={work_seconds:.2f}s outcomes={outcomes}")
    assert any(rc == -signal.SIGKILL for _, rc, _, _ in outcomes), outcomes  # at least one kill landed mid-run


def test_second_writer_is_refused_while_the_first_runs(data, tmp_path):
    images, _, _ = data
    out = tmp_path / "c.h5"
    first = _start(images, out, "--commit-rows", "4", "--batch-size", "4", "--workers", "0")
    try:
        assert _wait_for(work_dir_for(out) / "plan.json", first)
        first.send_signal(signal.SIGSTOP)  # paused while it holds the lock: the second start always meets it
        still_running = first.poll() is None
        second = run_cli("extract", "fake/image", images, "-o", out, *ARGS, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
        rc = first.wait(timeout=120)
        first.stdout.close()
        first.stderr.close()
    assert still_running, "the first writer finished before the second started; make the data set larger"
    assert second.returncode == 1
    assert "being written by another tlkit process" in second.stderr
    assert "Traceback" not in second.stderr
    assert rc == 0
    # the first writer's result is intact (its batches differ from the baseline's, so compare values closely)
    assert verify_cache(out).ok


def test_file_size_limit_gives_a_clear_error_and_rerun_completes(data, tmp_path):
    images, baseline, _ = data
    out = tmp_path / "c.h5"
    limit = 100_000  # a segment (8 rows) fits; the final file (120 rows x 56 floats, ids, checksums) does not

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["--workers", "0"]  # worker shared memory would hit the limit first
    res = subprocess.run(
        [sys.executable, "-m", "tlkit", "extract", "fake/image", str(images), "-o", str(out), *ARGS, *args],
        capture_output=True,
        text=True,
        preexec_fn=cap,
        env=CHILD_ENV,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    assert "file-size limit" in res.stderr and "rerun the same command to resume" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() and work_dir_for(out).exists()
    assert verify_cache(out).status == "incomplete"
    done = run_cli("extract", "fake/image", images, "-o", out, *ARGS, *args)
    assert "0 computed" in done.stdout  # every row survived the failed run
    assert_same_cache(out, baseline)
