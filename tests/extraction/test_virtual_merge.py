"""``tlkit cache merge --virtual``: one file mapping the parts with HDF5 virtual datasets, readable by plain h5py and
every tlkit command, equal to the copying merge; a missing or rewritten part is refused with the fix, never read as
zeros; a full copy stays available (the default)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from _extract_helpers import read_cache, write_images
from click.testing import CliRunner

import tlkit
from tlkit.cache import FeatureCache, verify_cache
from tlkit.cli import cli
from tlkit.errors import CacheError

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
OPTS = {"precision": "fp32", "workers": 0, "batch_size": 4, "commit_rows": 4, "layers": "all", "views": 1}


@pytest.fixture
def parts(tmp_path):
    images = write_images(tmp_path / "imgs", classes=2, per_class=12, size=(16, 16))
    (images / "class_1" / "bad.png").write_bytes(b"not a png")
    out = []
    for i in range(3):
        part = tmp_path / "parts" / f"p{i}.h5"
        part.parent.mkdir(exist_ok=True)
        tlkit.extract("fake/image", images, part, shard=f"{i}/3", **OPTS)
        out.append(part)
    return out


def _same_data(a, b):
    x, y = read_cache(a), read_cache(b)
    for key in ("ids", "class_names", "skipped"):
        assert x[key] == y[key]
    assert np.array_equal(x["labels"], y["labels"]) and np.array_equal(x["features"], y["features"])
    assert np.array_equal(x["views"], y["views"]) and x["layers"].keys() == y["layers"].keys()
    assert all(np.array_equal(x["layers"][k], y["layers"][k]) for k in x["layers"])


def test_virtual_merge_equals_the_copy_and_reads_everywhere(parts, tmp_path):
    copy, virtual = tmp_path / "copy.h5", tmp_path / "parts" / "all.h5"
    res = CliRunner().invoke(cli, ["cache", "merge", *map(str, parts), "-o", str(copy)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["cache", "merge", *map(str, reversed(parts)), "-o", str(virtual), "--virtual"],
                             catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0 and "24 items" in res.output, res.output
    with h5py.File(virtual) as f:  # plain h5py: virtual datasets (every row dataset), relative part names
        assert all(f[name].is_virtual for name in ("features", "views", "layers/stem", "ids", "stamps", "labels"))
        assert {s.file_name for s in f["features"].virtual_sources()} == {"p0.h5", "p1.h5", "p2.h5"}
        assert list(f["ids"].asstr()[:2]) == read_cache(copy)["ids"][:2]
    assert virtual.stat().st_size < copy.stat().st_size / 2
    _same_data(virtual, copy)
    assert verify_cache(virtual).ok
    X, y = tlkit.load_features(virtual)
    assert X.shape == (24, 16) and (y >= 0).all()
    run = tlkit.train_head(virtual, tmp_path / "run", head="linear", epochs=2, val_split=0.25, device="cpu")
    assert run is not None
    moved = tmp_path / "moved"  # the folder moves as one
    shutil.copytree(parts[0].parent, moved)
    _same_data(moved / "all.h5", copy)


def test_missing_or_rewritten_part_is_refused_with_the_fix(parts, tmp_path):
    virtual = tmp_path / "parts" / "all.h5"
    tlkit.merge_caches(parts, virtual, virtual=True)
    parts[1].rename(parts[1].with_suffix(".gone"))
    with pytest.raises(CacheError, match=r"part .*p1.h5 of this virtual merge is missing; put it back"):
        FeatureCache(virtual)
    rep = verify_cache(virtual)
    assert not rep.ok and "missing" in rep.problems[0]
    with h5py.File(virtual) as f:  # plain h5py sees NaN for the missing part, never zeros
        assert np.isnan(f["features"][()]).any()
    parts[1].with_suffix(".gone").rename(parts[1])
    assert verify_cache(virtual).ok
    images = tmp_path / "imgs"
    tlkit.extract("fake/image", images, parts[2], shard="2/3", overwrite=True, **{**OPTS, "views": 0})
    with pytest.raises(CacheError, match="rewritten after the merge"):
        FeatureCache(virtual)


def test_verify_hashes_each_part_through_the_mapping(parts, tmp_path):
    virtual = tmp_path / "parts" / "all.h5"
    tlkit.merge_caches(parts, virtual, virtual=True)
    assert verify_cache(virtual).ok
    with h5py.File(parts[1], "r+") as f:  # a part's row changed in place: same run id, other numbers
        f["features"][3, 0] += 1.0
    rep = verify_cache(virtual)
    first = len(FeatureCache(parts[0]))
    rows = f"rows {first}..{first + len(FeatureCache(parts[1])) - 1}, a part of this virtual merge"
    assert not rep.ok and rep.problems == [
        f"checksum mismatch in features ({rows}): the data changed after it was written"
    ]
