"""``--shard I/N`` cuts by items when an input has fewer windows than shards: every shard of an input with at least
N items gets work, no item is in two shards, and the merged shards equal one uninterrupted run."""

from __future__ import annotations

import h5py
import pytest
from _extract_helpers import assert_same_cache, run_cli, write_images

from tlkit.extraction.plan import shard_bounds, shard_count, shard_unit


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 31, 240, 4095, 4096, 4097, 20_000])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 64])
@pytest.mark.parametrize(("window", "batch"), [(4096, 64), (8, 4), (1, 1)])
def test_shards_are_disjoint_cover_everything_and_none_is_empty(n, count, window, batch):
    bounds = [shard_bounds(n, (i, count), window, batch) for i in range(count)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, disjoint
    if n >= count:
        assert all(hi > lo for lo, hi in bounds), bounds  # every shard gets work
    unit = shard_unit(n, count, window, batch)
    assert all(lo % unit == 0 for lo, _ in bounds)  # cut on whole units (windows, else batches, else items)
    assert shard_count(n, count) == min(n, count)


def test_whole_windows_when_there_are_enough():
    assert shard_unit(20_000, 3, 4096, 64) == 4096
    assert shard_unit(240, 3, 4096, 16) == 16
    assert shard_unit(240, 3, 4096, 256) == 1
    assert shard_bounds(240, (1, 3), 4096, 16) == (80, 160)


def test_cli_shards_of_240_items_each_get_80_and_merge_to_the_single_run(tmp_path):
    images = write_images(tmp_path / "imgs", classes=3, per_class=80, size=(16, 16))
    opts = ["--precision", "fp32", "--workers", "0", "--batch-size", "16", "-q"]
    single = tmp_path / "single.h5"
    run_cli("extract", "fake/image", images, "-o", single, *opts)
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.h5"
        run_cli("extract", "fake/image", images, "-o", part, *opts, "--shard", f"{i}/3")
        with h5py.File(part) as f:
            assert f["features"].shape[0] == 80
        parts.append(part)
    merged = tmp_path / "merged.h5"
    run_cli("cache", "merge", *parts, "-o", merged)
    assert_same_cache(merged, single)
