"""WebDataset tar shards: real tars on disk and over ``http://127.0.0.1``, brace patterns, labels from ``cls`` or a
JSON field, a corrupt member and a truncated shard (named skips), a missing shard (one-line error), sharding, and
kill -9 + resume — each giving the same cache as one uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from _extract_helpers import CHILD_ENV, assert_same_cache, read_cache, run_cli
from _stream_helpers import http_server, write_folder, write_shards

import tlkit
from tlkit.cache import FeatureCache, merge_caches, work_dir_for
from tlkit.data.remote import REMOTE_COPIES_ENV, copies_folder, expand_braces
from tlkit.data.webdataset import split_name
from tlkit.errors import BadInputError
from tlkit.host.readers import open_dataset

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
API = {"precision": "fp32", "workers": 0, "batch_size": 4, "commit_rows": 8}
CLI = ["--precision", "fp32", "--workers", "0", "--batch-size", "4", "--commit-rows", "8"]
PATTERN = "{00000..00002}.tar"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("wds") / "shards", corrupt=frozenset({13}))


@pytest.fixture(scope="module")
def single(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("wds-single") / "single.h5"
    tlkit.extract("fake/image", f"{shards}/{PATTERN}", out, **API)
    return out


def test_names_and_braces():
    assert expand_braces("s/{00..02}.tar") == ["s/00.tar", "s/01.tar", "s/02.tar"]
    assert expand_braces("{a,b}/{8..10}") == ["a/8", "a/9", "a/10", "b/8", "b/9", "b/10"]
    assert split_name("dir/000123.seg.png") == ("dir/000123", "seg.png")
    assert split_name("noext") is None


def test_scan_ids_labels_and_layouts(shards):
    ds = open_dataset(f"{shards}/{PATTERN}", "image")
    assert ds.reader == "webdataset-image" and len(ds) == 30 and ds.class_names == ["0", "1"]
    assert ds.records[0].id == "00000.tar/000000" and ds.records[-1].id == "00002.tar/000029"
    assert [r.label for r in ds.records[:4]] == [0, 1, 0, 1]
    by_json = open_dataset(shards, "image", label_column="json:label")  # a folder of shards, a JSON field
    assert by_json.class_names == ["cat", "dog"] and [r.id for r in by_json.records] == [r.id for r in ds.records]
    one = open_dataset(shards / "00001.tar", "image")
    assert one.records[0].id == "00001.tar/000010"
    with pytest.raises(BadInputError, match="no sample has a 'lbl' label"):
        open_dataset(shards, "image", label_column="lbl")
    (shards.parent / "packed.tar.gz").write_bytes(b"")
    with pytest.raises(BadInputError, match="compressed tar .*gunzip"):
        open_dataset(shards.parent / "packed.tar.gz", "image")


def test_features_equal_the_same_images_in_folders(shards, single, tmp_path):
    folder = write_folder(tmp_path / "imgs", 30)
    (folder / "1" / "000013.png").unlink()  # the corrupt sample is not in the folder
    ref = tmp_path / "ref.h5"
    tlkit.extract("fake/image", folder, ref, **API)
    with FeatureCache(single) as a, FeatureCache(ref) as b:
        assert len(a) == 29 and [s["id"] for s in a.skipped] == ["00001.tar/000013"]
        assert "not an image" in a.skipped[0]["reason"]
        xa = dict(zip([i.rsplit("/", 1)[1] for i in a.ids], a.features[()], strict=True))
        xb = dict(zip([i.rsplit("/", 1)[1].removesuffix(".png") for i in b.ids], b.features[()], strict=True))
        assert xa.keys() == xb.keys()
        assert all(np.allclose(xa[k], xb[k], atol=1e-6) for k in xa)
        assert list(a.labels) == [int(k) % 2 for k in (i.rsplit("/", 1)[1] for i in a.ids)]


def test_truncated_shard_keeps_what_came_before_as_a_named_skip(shards, tmp_path):
    data = (shards / "00002.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2 + 100])
    ds = open_dataset(tmp_path / "00000.tar", "image")
    assert 0 < len(ds) < 10
    assert ds.skipped[-1].id == "00000.tar/" and "truncated or corrupt tar" in ds.skipped[-1].reason


def test_a_damaged_member_header_in_the_middle_is_a_named_skip(shards, tmp_path):
    """tarfile reads a bad header checksum after the first member as the end of the archive: the samples after it
    were dropped without a word. They are now a named skip of the shard."""
    import tarfile

    data = bytearray((shards / "00002.tar").read_bytes())
    with tarfile.open(shards / "00002.tar") as tf:
        members = tf.getmembers()
    header = members[len(members) // 2].offset
    data[header + 148 : header + 156] = b"0000000\0"  # a checksum that does not add up
    (tmp_path / "00000.tar").write_bytes(bytes(data))
    ds = open_dataset(tmp_path / "00000.tar", "image")
    assert 0 < len(ds) < 10
    assert ds.skipped[-1].id == "00000.tar/"
    assert f"damaged member header at byte {header}" in ds.skipped[-1].reason, ds.skipped[-1].reason


def test_listing_in_processes_gives_the_same_records_and_skips(shards, tmp_path):
    """Shards listed by two processes (forced: no time threshold) give the entries and skips of the listing here, in
    shard order, a truncated shard in the middle included; ``open_dataset`` lets a reader use every core."""
    from tlkit.data.webdataset import WebDatasetReader

    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes((shards / f"{i:05d}.tar").read_bytes())
    data = (shards / "00002.tar").read_bytes()
    (tmp_path / "00001b.tar").write_bytes(data[: len(data) // 2 + 100])  # truncated, listed second
    files = sorted(str(p) for p in tmp_path.glob("*.tar"))
    base, exts = str(tmp_path) + "/", ("png",)
    here, procs = WebDatasetReader("image"), WebDatasetReader("image")
    here.max_listing_processes = procs.max_listing_processes = 2
    alone = list(here._scan_shards(files, base, exts, "cls", parallel_after_s=float("inf")))
    parallel = list(procs._scan_shards(files, base, exts, "cls", parallel_after_s=0.0))
    assert here.listing_processes == 0 and procs.listing_processes == 2
    assert parallel == alone
    sizes = [len(found) for found, _, _ in alone]
    assert sizes[:2] == [10, 10] and 0 < sizes[2] < 10 and sizes[3] == 10
    assert any("truncated or corrupt tar" in s.reason for _, skips, _ in parallel for s in skips)
    from tlkit.host.readers import get_reader
    from tlkit.runtime.probe import cpu_count

    assert get_reader(open_dataset(f"{shards}/{PATTERN}", "image")).max_listing_processes == cpu_count()


def test_missing_shard_is_one_line_naming_it(shards, tmp_path):
    res = run_cli("extract", "fake/image", f"{shards}/{{00000..00003}}.tar", "-o", tmp_path / "x.h5", *CLI,
                  check=False)  # fmt: skip
    assert res.returncode == 1
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "00003.tar: not found" in lines[0], res.stderr
    assert not (tmp_path / "x.h5").exists() and not work_dir_for(tmp_path / "x.h5").exists()


def test_served_over_http_equals_local(shards, single, tmp_path):
    out = tmp_path / "http.h5"
    with http_server(shards) as url:
        res = run_cli("extract", "fake/image", url + PATTERN, "-o", out, *CLI, "--json")
        assert '"items": 29' in res.stdout
        with FeatureCache(out) as fc:
            assert fc.meta["dataset"]["root"] == url + PATTERN
    assert_same_cache(out, single)


@pytest.mark.parametrize("workers", [0, 2])
def test_remote_shards_cross_the_network_once(shards, single, tmp_path, monkeypatch, workers):
    """Listing a remote shard reads all of it; the listing keeps a local copy and the items are read from it, so
    extracting moves each shard's bytes once (twice with the copies off), in the main process and in workers."""
    monkeypatch.setenv(REMOTE_COPIES_ENV, str(tmp_path / "copies"))
    total = sum((shards / f"{i:05d}.tar").stat().st_size for i in range(3))
    served = [0]
    with http_server(shards, served) as url:
        out = tmp_path / "once.h5"
        tlkit.extract("fake/image", url + PATTERN, out, **{**API, "workers": workers})
        assert served[0] == total
        ds = open_dataset(url + PATTERN, "image")  # listed again in this process: the same copies, nothing read
        assert served[0] == total
        copies = sorted((tmp_path / "copies").glob("tlkit-remote-*/*.tar"))
        assert len(copies) == 3 and {r.source[3] for r in ds.records} == {str(c) for c in copies}
        assert ds.records[0].source[0] == url + "00000.tar" and ds.records[0].id == "00000.tar/000000"
        assert_same_cache(out, single)

        monkeypatch.setenv(REMOTE_COPIES_ENV, "off")
        served[0] = 0
        twice = tmp_path / "twice.h5"
        tlkit.extract("fake/image", url + PATTERN, twice, **API)
        assert served[0] > 1.9 * total  # the listing reads every byte, the items nearly all of them again
        assert_same_cache(twice, single)


def test_one_remote_shard_by_its_url_is_read_once(shards, tmp_path, monkeypatch):
    """A single shard's URL is a file by its name: no folder listing, which over HTTP would GET the whole file."""
    monkeypatch.setenv(REMOTE_COPIES_ENV, str(tmp_path / "copies"))
    served = [0]
    with http_server(shards, served) as url:
        ds = open_dataset(url + "00001.tar", "image")
    assert len(ds) == 10 and served[0] == (shards / "00001.tar").stat().st_size


def test_a_copy_gone_mid_run_is_read_over_the_network(shards, tmp_path, monkeypatch):
    from tlkit.host.readers import get_reader

    monkeypatch.setenv(REMOTE_COPIES_ENV, str(tmp_path / "copies"))
    with http_server(shards) as url:
        ds = open_dataset(url + PATTERN, "image")
        reader = get_reader(ds)
        expected = reader.read(ds.records[3])
        for copy in {r.source[3] for r in ds.records}:
            Path(copy).unlink()
        fresh = get_reader(ds)  # no open file kept from before
        assert fresh.read(ds.records[3]) == expected


def test_copies_are_removed_at_exit_and_after_a_kill(shards, tmp_path):
    parent = tmp_path / "copies"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = parent / f"tlkit-remote-{int(dead.stdout)}-abc"  # a killed process's folder: its process is gone
    orphan.mkdir(parents=True)
    (orphan / "x.tar").write_bytes(b"left behind")
    job = parent / "tlkit-remote-job-0123456789abcdef"  # a killed torchrun job's shared folder: its ranks are gone
    (job / ".pids").mkdir(parents=True)
    (job / ".pids" / dead.stdout.strip()).touch()
    env = {**CHILD_ENV, REMOTE_COPIES_ENV: str(parent)}
    with http_server(shards) as url:
        out = str(tmp_path / "c.h5")
        cmd = [sys.executable, "-m", "tlkit", "extract", "fake/image", url + PATTERN, "-o", out, *CLI]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert list(parent.iterdir()) == []  # the orphans swept, the run's own copies removed


def test_copies_stay_out_of_memory(monkeypatch):
    """A temporary folder in RAM (tmpfs, like /tmp on many desktops) would hold the copies in memory: /var/tmp then,
    unless TMPDIR names the folder explicitly."""
    import os
    import tempfile

    from tlkit.data.remote import _in_memory, default_copies_parent

    if not _in_memory("/dev/shm") or _in_memory("/var/tmp") or not os.access("/var/tmp", os.W_OK):
        pytest.skip("needs a tmpfs /dev/shm and a disk-backed, writable /var/tmp")
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")
    assert default_copies_parent() == "/var/tmp"
    monkeypatch.setenv("TMPDIR", "/dev/shm")
    assert default_copies_parent() == "/dev/shm"


def test_copies_can_be_off(monkeypatch):
    monkeypatch.setenv(REMOTE_COPIES_ENV, "off")
    assert copies_folder() is None


def test_shards_by_items_merge_to_the_single_run(shards, single, tmp_path):
    parts = []
    for i in range(3):
        part = tmp_path / f"p{i}.h5"
        tlkit.extract("fake/image", f"{shards}/{PATTERN}", part, shard=f"{i}/3", **API)
        parts.append(part)
    assert [len(read_cache(p)["ids"]) for p in parts] == [
        8,
        7,
        14,
    ]  # whole windows of 8 (the corrupt sample is in part 1)
    assert_same_cache(merge_caches(parts, tmp_path / "m.h5"), single)


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    shards = write_shards(tmp_path / "big", n_shards=4, per_shard=30)
    src = f"{shards}/{{00000..00003}}.tar"
    args = ["--precision", "fp32", "--workers", "0", "--batch-size", "4", "--commit-rows", "4", "--layers", "all"]
    ref = tmp_path / "ref.h5"
    run_cli("extract", "fake/image", src, "-o", ref, *args, timeout=600)
    out = tmp_path / "c.h5"
    cmd = [sys.executable, "-m", "tlkit", "extract", "fake/image", src, "-o", str(out), *args]
    proc = subprocess.Popen(cmd, env=CHILD_ENV, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    work = work_dir_for(out)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and len(list(work.glob("seg-*.h5"))) < 3:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and work.exists()
    res = run_cli("extract", "fake/image", src, "-o", out, *args, "--json", timeout=600)
    assert '"status": "resumed"' in res.stdout
    assert_same_cache(out, ref)
    with h5py.File(out) as f:
        assert f["features"].shape[0] == 120


@pytest.mark.slow
@pytest.mark.dist
def test_torchrun_two_ranks_over_http_equal_single(shards, single, tmp_path):
    """Two ranks on one node share the copies of the remote shards: every byte crosses the network once, and the
    last rank to end removes the copies."""
    out = tmp_path / "dist.h5"
    copies = tmp_path / "copies"
    env = {**CHILD_ENV, "HF_HUB_OFFLINE": "1", "TLKIT_DIST_TIMEOUT": "120", REMOTE_COPIES_ENV: str(copies)}
    served = [0]
    with http_server(shards, served) as url:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tlkit",
               "extract", "fake/image", url + PATTERN, "-o", str(out), *CLI, "--json"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"path"') == 1 and '"items": 29' in proc.stdout
    assert_same_cache(out, single)
    assert served[0] == sum((shards / f"{i:05d}.tar").stat().st_size for i in range(3))
    assert list(copies.iterdir()) == []
