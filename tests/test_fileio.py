"""Atomic writes and the single-writer lock shared by the cache and the run directories (tlkit/fileio.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tlkit.cache import cache_lock
from tlkit.errors import CacheError, ConfigError, TlkitError
from tlkit.fileio import atomic_write, atomic_write_with, writer_lock
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
        with pytest.raises(CacheError, match="this cache is being written"):
            with cache_lock(cache):
                pass
        with pytest.raises(ConfigError, match="this run directory is being written"):
            with run_lock(run):
                pass
    assert (tmp_path / "c.h5.lock").exists() and (run / ".lock").exists()
    assert issubclass(CacheError, TlkitError)


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
    with writer_lock(lock, "c.h5", noun="cache", timeout=10):  # the dead holder's lock is gone at once
        pass
