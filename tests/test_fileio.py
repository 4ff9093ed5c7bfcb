"""Atomic writes and the single-writer lock shared by the cache and the run directories (tlkit/fileio.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tlkit.cache import cache_lock
from tlkit.errors import CacheError, ConfigError, TlkitError
from tlkit.fileio import atomic_write, atomic_write_with, lock_holder, writer_lock
from tlkit.runs.rundir import run_lock


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "config.json"
    with atomic_write(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and _leftovers(target.parent) == []
    with pytest.raises(RuntimeError), atomic_write(target, "w") as fh:
        fh.write("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "new" and _leftovers(target.parent) == []


def test_atomic_write_with_hands_a_path_to_the_writer(tmp_path):
    target = tmp_path / "plot.png"
    atomic_write_with(target, lambda tmp: open(tmp, "wb").write(b"png"))
    assert target.read_bytes() == b"png"

    def fail(tmp: str) -> None:
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, fail)
    assert target.read_bytes() == b"png" and _leftovers(tmp_path) == []


def test_new_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "report.json", "w") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_a_second_writer_gets_one_line_naming_the_path_and_the_fix(tmp_path):
    target = tmp_path / "thing"
    with writer_lock(tmp_path / "thing.lock", target, noun="thing", error=ConfigError):
        with pytest.raises(ConfigError) as info:
            with writer_lock(tmp_path / "thing.lock", target, noun="thing", error=ConfigError):
                pass
    msg = str(info.value)
    assert "\n" not in msg and str(target) in msg and "this thing is being written by another tlkit process" in msg
    assert msg.endswith("write to another output")  # the library names the parameter ...
    assert info.value.for_flag("--output").endswith("write to another --output")  # ... the CLI the flag
    with writer_lock(tmp_path / "thing.lock", target, noun="thing"):  # released after the first block
        pass


def test_cache_and_run_locks_use_their_own_files_and_errors(tmp_path):
    cache, run = tmp_path / "c.h5", tmp_path / "run"
    with cache_lock(cache), run_lock(run):
        assert (tmp_path / "c.h5.lock").exists() and (run / ".lock").exists()
        with pytest.raises(CacheError, match="this cache is being written"):
            with cache_lock(cache):
                pass
        with pytest.raises(ConfigError, match="this run directory is being written"):
            with run_lock(run):
                pass
    assert sorted(os.listdir(tmp_path)) == []  # a clean release deletes the lock files, and the empty run folder
    assert issubclass(CacheError, TlkitError)


def test_a_clean_release_leaves_no_lock_and_no_empty_folder_it_made(tmp_path):
    kept = tmp_path / "runs"
    kept.mkdir()
    with writer_lock(kept / "a" / "b" / ".lock", kept / "a" / "b", noun="run directory"):
        holder = lock_holder(kept / "a" / "b" / ".lock")
        assert holder is not None and holder["pid"] == os.getpid()
    assert sorted(os.listdir(tmp_path)) == ["runs"] and not any(kept.iterdir())  # runs/ was there before: it stays
    with writer_lock(kept / "a" / "b" / ".lock", kept / "a" / "b", noun="run directory"):
        (kept / "a" / "b" / "config.json").write_text("{}")  # the run wrote something: its folder stays
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*")) == ["a", "a/b", "a/b/config.json"]
    assert lock_holder(kept / "a" / "b" / ".lock") is None


def test_a_waiter_that_gets_a_released_lock_excludes_the_next_writer(tmp_path):
    """The holder deletes the lock file as it releases it; a writer that had opened that file and gets its lock
    must notice that the path names another file now, or two writers would both think they hold the lock."""
    lock = tmp_path / "c.h5.lock"
    waiter = textwrap.dedent(f"""
        import sys
        from tlkit.fileio import writer_lock
        with writer_lock({str(lock)!r}, "c.h5", noun="cache", timeout=60):
            print("got", flush=True)
            sys.stdin.read()
    """)
    for _ in range(3):
        with writer_lock(lock, "c.h5", noun="cache"):
            proc = subprocess.Popen(
                [sys.executable, "-c", waiter], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            time.sleep(0.5)  # let it open the file and wait for the lock
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "got"
            assert lock.exists()
            with pytest.raises(TlkitError, match=f"being written by another tlkit process \\(pid {proc.pid} "):
                with writer_lock(lock, "c.h5", noun="cache"):
                    pass
        finally:
            proc.communicate("", timeout=60)
        assert not lock.exists()


def test_files_replaced_by_the_writer_still_get_the_usual_permissions(tmp_path):
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        atomic_write_with(tmp_path / "w.safetensors", lambda tmp: save_file({"a": torch.zeros(2)}, tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644  # safetensors itself writes 0o600


def test_the_kernel_releases_the_lock_of_a_killed_holder(tmp_path):
    lock = tmp_path / "c.h5.lock"
    holder = textwrap.dedent(f"""
        import sys, time
        from tlkit.fileio import writer_lock
        with writer_lock({str(lock)!r}, "c.h5", noun="cache"):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(TlkitError, match="being written by another tlkit process"):
            with writer_lock(lock, "c.h5", noun="cache"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert lock.exists() and lock_holder(lock) is None  # the file stays, but nobody holds it
    with writer_lock(lock, "c.h5", noun="cache"):  # the dead holder's lock is gone at once
        pass
    assert not lock.exists()  # and the next clean release clears its file
