"""The loader's batched fetch (``ItemSource.__getitems__``, what the DataLoader calls) gives exactly what fetching
item by item gives: the same inputs, views, bad items and reasons, in the same order, whatever the group size."""

from __future__ import annotations

import pytest
import torch
from _stream_helpers import write_shards

from tlkit.extraction import loader as loader_module
from tlkit.extraction.loader import ItemSource
from tlkit.host.api import get_backbone
from tlkit.host.readers import get_reader, open_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("group_bytes", [1, 4096, 32 << 20])
def test_batched_fetch_equals_item_by_item(tmp_path, monkeypatch, group_bytes):
    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=9, corrupt=frozenset({4, 11}))
    ds = open_dataset(f"{shards}/{{00000..00001}}.tar", "image")
    source = ItemSource(ds.records, get_reader(ds), get_backbone("fake/image"), views=2, seed=3)
    monkeypatch.setattr(loader_module, "GROUP_BYTES", group_bytes)  # 1: one item per group; 32 MB: all at once
    positions = [5, 0, 4, 17, 11, 2]
    batched = source.__getitems__(positions)
    single = [source[p] for p in positions]
    assert [b.pos for b in batched] == positions
    assert [b.reason for b in batched] == [s.reason for s in single]
    assert sum(b.reason is not None for b in batched) == 2 and "not an image" in str(batched[2].reason)
    for b, s in zip(batched, single, strict=True):
        if s.reason is None:
            assert torch.equal(b.x, s.x) and all(torch.equal(u, v) for u, v in zip(b.views, s.views, strict=True))
