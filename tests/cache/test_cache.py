"""The cache format, its reader, verification, export and merge, on real HDF5 files from real extractions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from _extract_helpers import assert_same_cache, read_cache, write_images

import tlkit
from tlkit.cache import FeatureCache, export_cache, merge_caches, verify_cache, work_dir_for
from tlkit.errors import CacheError, FingerprintMismatchError, UnknownNameError

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = write_images(tmp_path_factory.mktemp("data") / "imgs", classes=3, per_class=10)
    (root / "class_1" / "broken.png").write_bytes(b"this is not a png")
    return root


@pytest.fixture(scope="module")
def rich_cache(images, tmp_path_factory):
    """Layers, views and a skipped item: exercises every part of the format."""
    out = tmp_path_factory.mktemp("caches") / "rich.h5"
    tlkit.extract("fake/image", images, out, precision="fp32", workers=0, layers="all", views=2)
    return out


def test_documented_shapes_readable_with_plain_h5py(rich_cache):
    # A separate interpreter that never imports tlkit: the format is readable by anyone with h5py.
    script = textwrap.dedent(
        f"""
        import json, sys, h5py
        with h5py.File({str(rich_cache)!r}, "r") as f:
            meta = json.loads(f.attrs["tlkit"])
            n, d = f["features"].shape
            out = dict(
                n=n, d=d, dtype=str(f["features"].dtype), labels=str(f["labels"].dtype),
                labels_shape=list(f["labels"].shape), ids=[s.decode() for s in f["ids"][:2]],
                layers={{k: list(v.shape) for k, v in f["layers"].items()}}, views=list(f["views"].shape),
                complete=meta["complete"], fmt=meta["format"], version=meta["format_version"],
                fingerprint=meta["backbone"]["fingerprint"], classes=meta["class_names"],
                skipped=meta["skipped"], precision=meta["precision"], store=meta["store_dtype"],
                dataset_fp=meta["dataset"]["fingerprint"], tlkit_loaded="tlkit" in sys.modules,
            )
        print(json.dumps(out))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    info = json.loads(res.stdout)
    assert info["tlkit_loaded"] is False
    assert (info["n"], info["d"]) == (30, 16)  # 31 files, one unreadable
    assert info["dtype"] == "float32" and info["labels"] == "int64" and info["labels_shape"] == [30]
    assert info["ids"] == ["class_0/img_0000.png", "class_0/img_0001.png"]
    assert info["layers"] == {"stem": [30, 8], "stages.0": [30, 16], "stages.1": [30, 16]}
    assert info["views"] == [2, 30, 16]
    assert info["complete"] is True and info["fmt"] == "tlkit-features" and info["version"] == 1
    assert info["fingerprint"] == tlkit.get_backbone("fake/image").fingerprint()
    assert info["classes"] == ["class_0", "class_1", "class_2"]
    assert [s["id"] for s in info["skipped"]] == ["class_1/broken.png"]
    assert "not an image" in info["skipped"][0]["reason"]
    assert info["precision"] == "fp32" and info["store"] == "float32" and len(info["dataset_fp"]) == 32


def test_feature_cache_api(rich_cache):
    with FeatureCache(rich_cache) as fc:
        assert len(fc) == 30 and fc.dim == 16
        assert fc.features.shape == (30, 16)  # an h5py dataset: lazy
        assert isinstance(fc.features, h5py.Dataset)
        assert fc.labels.dtype == np.int64 and sorted(set(fc.labels.tolist())) == [0, 1, 2]
        assert fc.ids[0] == "class_0/img_0000.png" and len(set(fc.ids)) == 30
        assert fc.class_names == ["class_0", "class_1", "class_2"]
        assert fc.layer_names == ["stem", "stages.0", "stages.1"]
        assert fc.layer("stem").shape == (30, 8)
        assert fc.views.shape == (2, 30, 16) and fc.n_views == 2
        assert fc.meta["complete"] is True
        assert fc.backbone["name"] == "fake/image"
        rebuilt = fc.build_backbone()
        assert rebuilt.fingerprint() == fc.fingerprint
        with pytest.raises(UnknownNameError, match="stages.9"):
            fc.layer("stages.9")
        # the final features equal the last block's pooled output (one forward pass stores both)
        assert np.array_equal(fc.features[()], fc.layer("stages.1")[()])
        # iter_batches: every row exactly once, with or without shuffling
        for shuffle in (False, True):
            seen = []
            for X, y, ids in fc.iter_batches(7, shuffle=shuffle, seed=1, with_ids=True):
                assert X.dtype == np.float32 and len(X) == len(y) == len(ids) <= 7
                seen += ids
                rows = [fc.ids.index(i) for i in ids]
                assert np.array_equal(X, fc.features[()][rows])
                assert np.array_equal(y, fc.labels[rows])
            assert sorted(seen) == sorted(fc.ids)
            assert (seen != fc.ids) == shuffle
        X, _ = next(fc.iter_batches(100, view=1))
        assert np.array_equal(X, fc.views[1])


def test_load_features_feeds_logistic_regression(images, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    out = tmp_path / "c.h5"
    tlkit.extract("fake/image", images, out, precision="fp32", workers=0)
    X, y = tlkit.load_features(out)
    assert X.shape == (30, 16) and X.dtype == np.float32 and y.dtype == np.int64
    scores = cross_val_score(LogisticRegression(max_iter=2000), X, y, cv=3)
    assert scores.mean() >= 0.9  # the classes differ in colour: frozen features separate them


def test_load_features_layers_and_views(rich_cache):
    X, y = tlkit.load_features(rich_cache, layer="stem")
    assert X.shape == (30, 8)
    V, y2 = tlkit.load_features(rich_cache, view=0)
    assert V.shape == (30, 16) and np.array_equal(y, y2)
    F, _ = tlkit.load_features(rich_cache)
    assert not np.allclose(V, F)  # an augmented view is not the clean view
    with pytest.raises(CacheError, match="out of range"):
        tlkit.load_features(rich_cache, view=2)
    with pytest.raises(CacheError, match="not both"):
        tlkit.load_features(rich_cache, layer="stem", view=0)


def test_verify_ok_then_detects_tampering(rich_cache, tmp_path):
    rep = verify_cache(rich_cache)
    assert rep.ok and rep.items == 30 and not rep.problems
    copy = tmp_path / "tampered.h5"
    copy.write_bytes(rich_cache.read_bytes())
    with h5py.File(copy, "r+") as f:
        f["features"][3, 2] += 1.0
    rep = verify_cache(copy)
    assert rep.status == "corrupt" and any("checksum mismatch in features" in p for p in rep.problems)


def test_verify_reports_missing_incomplete_and_foreign(tmp_path):
    assert verify_cache(tmp_path / "nope.h5").status == "missing"
    work = work_dir_for(tmp_path / "half.h5")
    work.mkdir()
    (work / "plan.json").write_text('{"todo": 10}')
    rep = verify_cache(tmp_path / "half.h5")
    assert rep.status == "incomplete" and "rerun" in rep.problems[0]
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(tmp_path / "half.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    assert verify_cache(foreign).status == "corrupt"
    with pytest.raises(CacheError, match="not a tlkit feature cache"):
        FeatureCache(foreign)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 100)
    assert verify_cache(junk).status == "corrupt"


def test_export_npz_and_csv(rich_cache, tmp_path):
    npz = export_cache(rich_cache, tmp_path / "f.npz", "npz")
    data = np.load(npz, allow_pickle=False)
    X, y = tlkit.load_features(rich_cache)
    assert np.array_equal(data["X"], X) and np.array_equal(data["y"], y)
    with FeatureCache(rich_cache) as fc:
        assert data["ids"].tolist() == fc.ids
    assert data["class_names"].tolist() == ["class_0", "class_1", "class_2"]
    lay = np.load(export_cache(rich_cache, tmp_path / "stem.npz", "npz", layer="stem"))
    assert lay["X"].shape == (30, 8)
    csv = export_cache(rich_cache, tmp_path / "f.csv", "csv")
    lines = csv.read_text().splitlines()
    assert lines[0].split(",")[:4] == ["id", "label", "class", "f0"] and len(lines) == 31
    first = lines[1].split(",")
    assert first[0] == "class_0/img_0000.png" and first[2] == "class_0"
    assert np.allclose([float(v) for v in first[3:]], X[0])


def test_float16_store(images, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    tlkit.extract("fake/image", images, a, precision="fp32", workers=0)
    tlkit.extract("fake/image", images, b, precision="fp32", workers=0, store_dtype="float16")
    with h5py.File(b) as f:
        assert f["features"].dtype == np.float16
    Xa, _ = tlkit.load_features(a)
    Xb, _ = tlkit.load_features(b)
    assert Xb.dtype == np.float32
    assert np.allclose(Xa, Xb, rtol=2e-3, atol=2e-3) and not np.array_equal(Xa, Xb)


def test_shards_merge_to_the_single_run(images, tmp_path):
    single = tmp_path / "single.h5"
    opts = dict(precision="fp32", workers=0, commit_rows=4, batch_size=4, layers="all", views=1)
    tlkit.extract("fake/image", images, single, **opts)
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.h5"
        tlkit.extract("fake/image", images, part, shard=f"{i}/3", **opts)
        parts.append(part)
    sizes = [len(read_cache(p)["ids"]) for p in parts]
    assert sum(sizes) == 30 and all(s > 0 for s in sizes)
    merged = merge_caches(list(reversed(parts)), tmp_path / "merged.h5")  # order given does not matter
    assert_same_cache(merged, single)
    assert verify_cache(merged).ok

    with pytest.raises(CacheError, match="missing shard"):
        merge_caches(parts[:2], tmp_path / "m2.h5")
    with pytest.raises(CacheError, match="given twice"):
        merge_caches([parts[0], parts[0], parts[1]], tmp_path / "m3.h5")
    other = tmp_path / "other.h5"
    tlkit.extract("fake/image", images, other, shard="2/3", **{**opts, "views": 0})
    with pytest.raises(FingerprintMismatchError, match="views"):
        merge_caches([parts[0], parts[1], other], tmp_path / "m4.h5")
    with pytest.raises(CacheError, match="some parts are shards"):
        merge_caches([single, parts[0]], tmp_path / "m5.h5")
    first5 = tmp_path / "first5.h5"
    tlkit.extract("fake/image", images, first5, limit=5, **opts)
    with pytest.raises(CacheError, match="overlaps"):
        merge_caches([single, first5], tmp_path / "m6.h5")
    with pytest.raises(CacheError, match="exists"):
        merge_caches(parts, single)
