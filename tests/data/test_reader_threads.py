"""Readers used from several threads at once, as extraction prepares batches in its own process on the CPU
(``--workers auto`` with a standard image pipeline: :func:`tlkit.extraction.loader.in_process_on_cpu`). Every thread
must read exactly the item it asked for: a file object shared between threads mixes their seeks and reads, so an
item is read at another item's offset (a good item recorded as a skip, or another item's bytes in its row)."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from _stream_helpers import CLASSES, png_bytes, write_shards

import tlkit
from tlkit.cache import FeatureCache
from tlkit.data.remote import OpenFiles, PerThread
from tlkit.host.readers import get_reader, open_dataset

THREADS = 4


def _reads_in_threads(reader, records, rounds: int = 4) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Each item read alone, then every item ``rounds`` times in a shuffled order by :data:`THREADS` threads."""
    alone = [reader.read(r) for r in records]
    order = [int(i) for _ in range(rounds) for i in np.random.default_rng(0).permutation(len(records))]
    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(lambda i: (i, reader.read(records[i])), order, chunksize=1))
    return alone, got


def test_webdataset_members_read_from_threads_are_their_own(tmp_path):
    shards = write_shards(tmp_path / "shards", n_shards=3, per_shard=40)
    ds = open_dataset(f"{shards}/{{00000..00002}}.tar", "image")
    alone, got = _reads_in_threads(get_reader(ds), ds.records)
    assert len(set(alone)) == len(alone) == 120  # every member differs, so a misread cannot pass for the item
    wrong = [i for i, data in got if data != alone[i]]
    assert not wrong, f"{len(wrong)} of {len(got)} reads returned other bytes (first: {ds.records[wrong[0]].id})"
    if Path("/proc/self/fd").is_dir():  # the files of threads that ended are closed: no descriptor piles up
        reader, before = get_reader(ds), len(list(Path("/proc/self/fd").iterdir()))
        for _ in range(5):
            _reads_in_threads(reader, ds.records, rounds=1)
        assert len(list(Path("/proc/self/fd").iterdir())) <= before + 3  # this thread's shards only


def test_parquet_rows_read_from_threads_are_their_own(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow: pip install 'tlkit[parquet]'")
    pa = pytest.importorskip("pyarrow")
    for part in range(2):
        ks = range(part * 40, part * 40 + 40)
        table = pa.table({"image": pa.array([png_bytes(k) for k in ks], pa.binary()),
                          "label": [CLASSES[k % 2] for k in ks]})  # fmt: skip
        pq.write_table(table, tmp_path / f"part-{part}.parquet", row_group_size=4)  # 20 row groups, 2 kept at a time
    ds = open_dataset(tmp_path, "image")
    alone, got = _reads_in_threads(get_reader(ds), ds.records)
    assert len(set(alone)) == len(alone) == 80
    assert [data == alone[i] for i, data in got] == [True] * len(got)


def test_per_thread_state_is_new_in_each_thread_and_after_pickling():
    import pickle
    import threading

    state: PerThread[dict[str, int]] = PerThread(dict)
    mine = state.get()
    mine["x"] = 1
    other: list[dict[str, int]] = []
    t = threading.Thread(target=lambda: other.append(state.get()))
    t.start()
    t.join()
    assert state.get() is mine and other[0] == {} and other[0] is not mine
    copy = pickle.loads(pickle.dumps(state))
    assert copy.get() == {} and copy.get() is not mine
    files = OpenFiles(max_open=3)
    assert pickle.loads(pickle.dumps(files)).max_open == 3


@pytest.mark.skipif(importlib.util.find_spec("tlkit_effnet_lite") is None, reason="needs the effnet/lite0 example")
def test_threaded_extraction_of_shards_equals_one_thread(tmp_path):
    """A real image backbone on WebDataset shards with the defaults on the CPU prepares batches on two threads in
    this process; its cache holds the same items and rows as a run that reads one item at a time."""
    import torch

    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=32)
    pattern = f"{shards}/{{00000..00001}}.tar"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the threads that prepare batches: one per torch thread
    try:
        threaded = tlkit.extract("effnet/lite0", pattern, tmp_path / "threads.h5", precision="fp32", batch_size=16)
    finally:
        torch.set_num_threads(threads)
    alone = tlkit.extract("effnet/lite0", pattern, tmp_path / "alone.h5", precision="fp32", batch_size=16, workers=0)
    assert threaded.workers == 0 and threaded.n_skipped == alone.n_skipped == 0
    with FeatureCache(tmp_path / "threads.h5") as a, FeatureCache(tmp_path / "alone.h5") as b:
        assert a.ids == b.ids and len(a.ids) == 64
        x, y = a.features[()], b.features[()]
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.9999
