"""Records as columns (``tlkit.data.records``): a ``RecordTable`` is the same sequence of records as a list, in
about 100 bytes per WebDataset sample; listing shards streams into one; the engine's row index finds rows exactly."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from _stream_helpers import write_shards

from tlkit.cache.workdir import Segment
from tlkit.data import columns
from tlkit.data import records as rec
from tlkit.data.base import Record
from tlkit.data.records import PackedStrings, RecordTable
from tlkit.extraction.known import Known, RowIndex
from tlkit.host.readers import open_dataset


def sample(n=50):
    odd = os.fsdecode(b"caf\xe9.png")  # a non-UTF-8 file name: a surrogate-escaped id
    return [
        Record(f"{i:05d}.tar/{i:06d}" if i != 7 else odd, (f"/data/{i % 3:05d}.tar", 512 * i, 100 + i),
               i % 4 - (i % 5 == 0), None if i % 6 == 0 else 10 * i, f"1024:{i}:{i % 4}")
        for i in range(n)
    ]  # fmt: skip


def test_a_table_is_the_same_sequence_as_the_list():
    records = sample()
    table = RecordTable.from_records(records)
    assert table == records and records == table and list(table) == records and len(table) == 50
    assert table[7] == records[7] and table[-1] == records[-1] and table[7].id.encode("utf-8", "surrogateescape")
    assert table[3:9] == records[3:9] and table[::7] == records[::7] and table[40:100] == records[40:]
    assert table.take([9, 2, 2]) == [records[9], records[2], records[2]]
    assert pickle.loads(pickle.dumps(table)) == records  # travels to spawned DataLoader workers
    assert table.labels.dtype == np.int64 and list(table.ids[:2]) == [r.id for r in records[:2]]
    with pytest.raises(IndexError):
        table[50]


def test_records_at_builds_a_batch_by_column_the_same_as_one_by_one(monkeypatch):
    records = sample()
    table = RecordTable.from_records(records)
    at = [49, 0, 7, 7, 13]
    assert table.records_at(at) == [records[p] for p in at] and table.records_at([]) == []
    assert rec.records_at(records, at) == rec.records_at(table, at) == [records[p] for p in at]
    assert rec.ids_stamps_at(table, np.array(at)) == ([records[p].id for p in at], [records[p].stamp for p in at])
    assert rec.ids_stamps_at(records, at) == rec.ids_stamps_at(table, at)
    for bad in ([50], [-1]):  # no wrapping: a planned position is never negative
        with pytest.raises(IndexError):
            table.records_at(bad)
        with pytest.raises(IndexError):
            rec.ids_stamps_at(table, bad)
    mixed = [Record(str(i), f"/p/{i}.png" if i != 4 else ["a", i], i % 2) for i in range(8)]  # an object column
    assert RecordTable.from_records(mixed).records_at([4, 1]) == [mixed[4], mixed[1]]
    monkeypatch.setattr(columns, "MAX_DISTINCT", 3)
    many = [Record(str(i), (f"/p/{i}.png", i, None), 1, i) for i in range(10)]  # packed and coded tuple fields
    assert RecordTable.from_records(many).records_at([9, 3]) == [many[9], many[3]]


def test_sources_that_do_not_pack_stay_python_objects(monkeypatch):
    mixed = [Record(str(i), f"/p/{i}.png" if i != 4 else ["a", i], 0) for i in range(8)]
    assert RecordTable.from_records(mixed) == mixed  # a list among strings: the column falls back to objects
    monkeypatch.setattr(columns, "MAX_DISTINCT", 3)
    many = [Record(str(i), (f"/p/{i}.png", i, None), 1) for i in range(10)]
    assert RecordTable.from_records(many) == many  # past MAX_DISTINCT a string column is packed instead of coded
    strings = PackedStrings.of(["a", "", "ßé", os.fsdecode(b"\xff")])
    assert list(strings) == ["a", "", "ßé", os.fsdecode(b"\xff")] and strings.raw(3) == b"\xff"
    assert PackedStrings.concat([strings[2:], strings[:1]]) == ["ßé", os.fsdecode(b"\xff"), "a"]


def test_webdataset_listing_is_a_compact_table(tmp_path):
    shards = write_shards(tmp_path / "shards", n_shards=3, per_shard=40)
    ds = open_dataset(f"{shards}/{{00000..00002}}.tar", "image")
    assert isinstance(ds.records, RecordTable) and len(ds.records) == 120
    assert ds.records.nbytes / len(ds.records) < 150  # as a list of records: about 500 bytes each
    rebuilt = RecordTable.from_records(list(ds.records))
    assert (
        rebuilt == ds.records
        and ds.fingerprint() == type(ds)(**{**ds.__dict__, "records": list(ds.records)}).fingerprint()
    )
    assert ds.labelled and ds.subset([0, 5]).records == [ds.records[0], ds.records[5]]


def test_fingerprint_lines_are_the_documented_lines_for_a_table_and_a_list():
    """Caches remember the data set's fingerprint: the byte-level lines of a table must hash exactly as the lines
    written out per record (ids with non-UTF-8 bytes, negative and multi-digit labels, chunks of any size)."""
    records = sample(50)
    expected = "".join(f"{r.id}\0{r.label}\0{r.stamp}\n" for r in records).encode("utf-8", "surrogateescape")
    table = RecordTable.from_records(records)
    for chunk in (1, 7, 50, 65536):
        assert b"".join(rec.fingerprint_lines(table, chunk)) == expected
        assert b"".join(rec.fingerprint_lines(records, chunk)) == expected
    assert b"".join(rec.fingerprint_lines(table[10:20])) == b"".join(rec.fingerprint_lines(records[10:20]))
    assert list(rec.fingerprint_lines(RecordTable.from_records([]))) == []


def test_row_index_finds_rows_exactly_with_the_precedence_of_sources():
    index = RowIndex()
    index.add(0, PackedStrings.of(["a", "b", "a"]), PackedStrings.of(["s1", "s2", "s3"]), prio=0)  # cache 0
    index.add(1, PackedStrings.of(["b", "c"]), PackedStrings.of(["t2", "t3"]), prio=-1)  # cache 1: loses to cache 0
    index.add(2, PackedStrings.of(["c"]), PackedStrings.of(["u3"]), prio=1)  # a segment: wins over caches
    index.add(3, ["b"], ["v2"], prio=2, skip=True)  # a later segment skipped b
    assert index.find("a") == ("s1", 0, 0)  # first row of an id in a cache wins
    assert index.find("c") == ("u3", 2, 0) and index.find("b") is None and index.find("zz") is None


def test_known_places_this_runs_rows_by_position(tmp_path):
    selection = RecordTable.from_records([Record(f"id{i}", f"/x/{i}", i % 2, None, f"s{i}") for i in range(6)])
    known = Known()
    seg = Segment(tmp_path / "seg-000000.h5", 0, 2, PackedStrings.of(["id1", "id4"]), PackedStrings.of(["s1", "old"]),
                  [{"id": "id5", "reason": "not an image", "stamp": "s5"}], {}, 8)  # fmt: skip
    known.add_segment(seg)
    todo_at = known.todo(selection, job=None)  # id1 and the skip id5 are known; id4's stamp changed
    assert todo_at.tolist() == [0, 2, 3, 4]
    known.add_computed(4, [tmp_path / "seg-000001.h5"], [np.array([0, 1, 3])], [{"id": "id3", "reason": "bad",
                       "stamp": "s3"}], rec.take(selection, todo_at))  # fmt: skip
    final = known.final_rows(selection, todo_at)
    assert list(final.ids) == ["id0", "id1", "id2", "id4"] and final.src.tolist() == [1, 0, 1, 1]
    assert final.rows.tolist() == [0, 0, 1, 2] and final.labels.tolist() == [0, 1, 0, 0]
    assert sorted(s["id"] for s in known.skips_in(selection)) == ["id3", "id5"]
