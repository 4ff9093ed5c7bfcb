"""The extraction engine through the Python API: keying, resume inputs, layers, views, text bucketing, bad items,
out-of-memory back-off and precision. Real tiny models, real files."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from _extract_helpers import assert_same_cache, read_cache, write_images, write_texts

import tlkit
from tlkit import open_dataset
from tlkit.cache import FeatureCache, work_dir_for
from tlkit.data.base import Dataset, Record
from tlkit.errors import BadInputError, CacheError, ConfigError, FingerprintMismatchError, UnknownNameError
from tlkit.extraction import embed_records
from tlkit.host.readers import get_reader
from tlkit.runtime import RuntimeOptions, resolve, resolve_precision
from tlkit.runtime.probe import cpu_has_native_bf16
from tlkit.runtime.progress import ProgressEvent
from tlkit.testing.fake import FakeImageBackbone, FakeTextBackbone

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]


FP32 = dict(precision="fp32", workers=0)


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "imgs", classes=2, per_class=6)


def direct_embeddings(backbone, dataset):
    """The reference: decode and embed each item alone, no engine involved."""
    bb = backbone.load()
    reader = get_reader(dataset)
    with torch.inference_mode():
        return {r.id: bb.embed(bb.preprocess([reader.load(r)]))[0].numpy() for r in dataset.records}


def test_values_equal_a_direct_forward(images, tmp_path):
    out = tmp_path / "c.h5"
    events: list[ProgressEvent] = []
    res = tlkit.extract("fake/image", images, out, progress=events.append, batch_size=5, **FP32)
    assert res.status == "created" and res.n_items == 12 and res.n_computed == 12 and res.n_skipped == 0
    ref = direct_embeddings(tlkit.get_backbone("fake/image"), open_dataset(images))
    with FeatureCache(out) as fc:
        for i, row in zip(fc.ids, fc.features[()], strict=True):
            np.testing.assert_allclose(row, ref[i], rtol=1e-5, atol=1e-6)
    stages = [e.stage for e in events]
    assert stages[0] == "extract" and "assemble" in stages and stages[-1] == "done"
    extract_events = [e for e in events if e.stage == "extract"]
    assert extract_events[-1].done == extract_events[-1].total == 12
    assert [e.done for e in extract_events] == sorted(e.done for e in extract_events)


def test_rerun_is_a_noop_that_says_so(images, tmp_path):
    out = tmp_path / "c.h5"
    tlkit.extract("fake/image", images, out, **FP32)
    before = (out.stat().st_mtime_ns, out.read_bytes())
    res = tlkit.extract("fake/image", images, out, **FP32)
    assert res.status == "up-to-date" and res.n_computed == 0 and res.n_items == 12
    assert "up to date" in res.summary()
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before  # not even rewritten


def test_added_items_are_the_only_ones_computed(images, tmp_path):
    out, ref = tmp_path / "c.h5", tmp_path / "ref.h5"
    tlkit.extract("fake/image", images, out, **FP32)
    old = read_cache(out)
    extra = write_images(tmp_path / "more", classes=2, per_class=3, seed=5)
    for d in ("class_0", "class_1"):
        for p in (extra / d).iterdir():
            shutil.copy(p, images / d / f"new_{p.name}")
    res = tlkit.extract("fake/image", images, out, **FP32)
    assert res.status == "updated" and res.n_computed == 6 and res.n_reused == 12 and res.n_items == 18
    new = read_cache(out)
    for i, row in zip(old["ids"], old["features"], strict=True):
        assert np.array_equal(new["features"][new["ids"].index(i)], row)  # old rows copied, not recomputed
    tlkit.extract("fake/image", images, ref, **FP32)
    assert_same_cache(out, ref)  # and the result is what a fresh run gives, in dataset order


def test_changed_and_removed_items(images, tmp_path):
    out = tmp_path / "c.h5"
    tlkit.extract("fake/image", images, out, **FP32)
    (images / "class_1" / "img_0000.png").unlink()
    target = images / "class_0" / "img_0002.png"
    shutil.copy(images / "class_0" / "img_0003.png", target)  # new content, so a new stamp
    os.utime(target, ns=(1, 1))
    res = tlkit.extract("fake/image", images, out, **FP32)
    assert res.n_computed == 1 and res.n_items == 11
    X, _ = tlkit.load_features(out)
    with FeatureCache(out) as fc:
        ids = fc.ids
    assert "class_1/img_0000.png" not in ids
    # the edited file was recomputed (alone, so equal up to float rounding across batch sizes)
    np.testing.assert_allclose(X[ids.index("class_0/img_0002.png")], X[ids.index("class_0/img_0003.png")], rtol=1e-5)


def test_mismatched_fingerprint_is_refused_unless_overwrite(images, tmp_path):
    out = tmp_path / "c.h5"
    tlkit.extract("fake/image", images, out, **FP32)
    other = tlkit.get_backbone("fake/image", pooling="max")
    assert other.fingerprint() != tlkit.get_backbone("fake/image").fingerprint()
    with pytest.raises(FingerprintMismatchError, match="backbone fingerprint"):
        tlkit.extract(other, images, out, **FP32)
    with pytest.raises(FingerprintMismatchError, match="preprocess|fingerprint"):
        tlkit.extract(tlkit.get_backbone("fake/image", preprocess={"input_size": [3, 24, 24]}), images, out, **FP32)
    with pytest.raises(FingerprintMismatchError, match="layers"):
        tlkit.extract("fake/image", images, out, layers="all", **FP32)
    X_before, _ = tlkit.load_features(out)
    res = tlkit.extract(other, images, out, overwrite=True, **FP32)
    assert res.status == "replaced" and res.n_computed == 12
    with FeatureCache(out) as fc:
        assert fc.fingerprint == other.fingerprint()
        assert not np.allclose(fc.features[()], X_before)


def test_foreign_file_is_not_replaced_without_overwrite(images, tmp_path):
    out = tmp_path / "c.h5"
    out.write_text("my notes")
    with pytest.raises(CacheError, match="pass overwrite to replace it"):
        tlkit.extract("fake/image", images, out, **FP32)
    assert out.read_text() == "my notes"
    tlkit.extract("fake/image", images, out, overwrite=True, **FP32)
    assert tlkit.verify_cache(out).ok


def test_layers_and_views_shapes_and_determinism(images, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    tlkit.extract("fake/image", images, a, layers="stem,stages.1", views=3, batch_size=4, **FP32)
    tlkit.extract("fake/image", images, b, layers="stages.1,stem", views=3, batch_size=7, precision="fp32", workers=1)
    with h5py.File(a) as f:
        assert f["features"].shape == (12, 16)
        assert sorted(f["layers"]) == ["stages.1", "stem"]
        assert f["layers/stem"].shape == (12, 8) and f["views"].shape == (3, 12, 16)
        views = f["views"][()]
        assert not np.allclose(views[0], views[1])  # different augmentations per view
        assert not np.allclose(views[0], f["features"][()])
    assert_same_cache(a, b)  # views are seeded per item: batch size and workers do not change them
    with pytest.raises(UnknownNameError, match="nope"):
        tlkit.extract("fake/image", images, tmp_path / "x.h5", layers="stem,nope", **FP32)


def test_text_is_bucketed_and_restored_to_dataset_order(tmp_path):
    csv = write_texts(tmp_path / "t.csv", n=30)
    out = tmp_path / "t.h5"
    res = tlkit.extract("fake/text", csv, out, batch_size=4, commit_rows=12, **FP32)
    assert res.n_items == 30
    ds = open_dataset(csv, modality="text")
    ref = direct_embeddings(tlkit.get_backbone("fake/text"), ds)
    with FeatureCache(out) as fc:
        assert fc.ids == [r.id for r in ds.records]  # dataset order, though batches were length-sorted
        assert fc.class_names == ["animals", "vehicles"]
        for i, row in zip(fc.ids, fc.features[()], strict=True):
            np.testing.assert_allclose(row, ref[i], rtol=1e-5, atol=1e-5)


def test_text_dataset_built_in_python(tmp_path):
    texts = ["short", "a much longer sentence about transfer learning " * 3, "mid length text", "x"]
    records = [Record(f"t{i}", t, label=i % 2, length=len(t), stamp=str(i)) for i, t in enumerate(texts)]

    class Identity(tlkit.Reader):
        name, modality = "identity", "text"

        def load(self, record):
            return record.source

    ds = Dataset(tmp_path, "identity", "text", records, ["a", "b"])
    out = tmp_path / "t.h5"
    tlkit.extract("fake/text", ds, out, reader=Identity(), batch_size=2, **FP32)
    bb = tlkit.get_backbone("fake/text").load()
    with FeatureCache(out) as fc, torch.inference_mode():
        assert fc.ids == ["t0", "t1", "t2", "t3"] and fc.labels.tolist() == [0, 1, 0, 1]
        for t, row in zip(texts, fc.features[()], strict=True):
            np.testing.assert_allclose(row, bb.embed(bb.preprocess([t]))[0].numpy(), rtol=1e-5, atol=1e-5)


class FlaggingText(FakeTextBackbone):
    """Marks items cut at max_length, as the text plugins do."""

    def item_flags(self, processed):
        return ("truncated",) if len(processed) >= int(self.spec.preprocess["max_length"]) else ()


def test_item_flags_are_counted(tmp_path):
    csv = write_texts(tmp_path / "t.csv", n=20)
    bb = FlaggingText("test/flagging", preprocess={"max_length": 40})
    ds = open_dataset(csv, modality="text")
    expected = sum(len(r.source.encode()) >= 40 for r in ds.records)
    assert 0 < expected < 20
    res = tlkit.extract(bb, csv, tmp_path / "t.h5", **FP32)
    assert res.flags == {"truncated": expected}
    assert f"{expected} truncated" in res.summary()
    with FeatureCache(tmp_path / "t.h5") as fc:
        assert fc.meta["flags"] == {"truncated": expected}


def test_bad_items_skip_and_fail(images, tmp_path):
    (images / "class_0" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (images / "class_1" / "aa_text.jpg").write_text("hello")
    res = tlkit.extract("fake/image", images, tmp_path / "c.h5", **FP32)
    assert res.n_items == 12 and res.n_skipped == 2
    assert sorted(s.id for s in res.skipped_now) == ["class_0/zz_corrupt.png", "class_1/aa_text.jpg"]
    assert "2 skipped" in res.summary()
    with FeatureCache(tmp_path / "c.h5") as fc:
        reasons = {s["id"]: s["reason"] for s in fc.skipped}
    assert set(reasons) == {"class_0/zz_corrupt.png", "class_1/aa_text.jpg"} and all(reasons.values())
    # a rerun does not retry the known-bad files: it is a no-op
    assert tlkit.extract("fake/image", images, tmp_path / "c.h5", **FP32).status == "up-to-date"
    with pytest.raises(BadInputError, match=r"class_0/zz_corrupt.png: .*set on_error to skip"):
        tlkit.extract("fake/image", images, tmp_path / "f.h5", on_error="fail", **FP32)


def test_limit_then_more(images, tmp_path):
    out = tmp_path / "c.h5"
    assert tlkit.extract("fake/image", images, out, limit=5, **FP32).n_items == 5
    res = tlkit.extract("fake/image", images, out, **FP32)
    assert res.n_computed == 7 and res.n_items == 12


class OomAbove4(FakeImageBackbone):
    """Runs out of memory on batches larger than 4, like a GPU would."""

    def embed(self, batch):
        if batch.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().embed(batch)


def test_auto_batch_backs_off_without_losing_a_batch(images, tmp_path):
    ref, out = tmp_path / "ref.h5", tmp_path / "oom.h5"
    tlkit.extract("fake/image", images, ref, batch_size=4, **FP32)
    res = tlkit.extract(OomAbove4("fake/image"), images, out, batch_size="auto", **FP32)
    assert res.n_items == 12 and res.batch_size == 32
    X, _ = tlkit.load_features(out)
    R, _ = tlkit.load_features(ref)
    np.testing.assert_allclose(X, R, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="out of memory at batch size 8 on cpu; lower batch_size or set it to auto"):
        tlkit.extract(OomAbove4("fake/image"), images, tmp_path / "fixed.h5", batch_size=8, **FP32)


def test_precision_auto_and_bf16(images, tmp_path):
    cpu = torch.device("cpu")
    assert resolve("extract", RuntimeOptions(device="cpu")).precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", cpu)
    a, b = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    tlkit.extract("fake/image", images, a, **FP32)
    res = tlkit.extract("fake/image", images, b, precision="bf16", workers=0)
    assert res.precision == "bf16"
    X, _ = tlkit.load_features(a)
    Y, _ = tlkit.load_features(b)
    cos = (X * Y).sum(1) / np.linalg.norm(X, axis=1) / np.linalg.norm(Y, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(X, Y)
    with FeatureCache(b) as fc:
        assert fc.precision == "bf16"
    with pytest.raises(FingerprintMismatchError, match="precision"):
        tlkit.extract("fake/image", images, b, **FP32)


def test_bad_options_and_inputs(images, tmp_path):
    with pytest.raises(ConfigError, match="store_dtype must be one of float32, float16, not 'int8'"):
        tlkit.extract("fake/image", images, tmp_path / "x.h5", store_dtype="int8")
    with pytest.raises(ConfigError, match="shard 3/3: need 0 <= I < N"):
        tlkit.extract("fake/image", images, tmp_path / "x.h5", shard="3/3")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        tlkit.extract("fake/image", images, tmp_path / "x.h5", device="cuda")
    with pytest.raises(BadInputError, match="text"):
        tlkit.extract("fake/text", images, tmp_path / "x.h5")  # a folder of PNGs for a text backbone
    with pytest.raises(BadInputError, match="no such file"):
        tlkit.extract("fake/image", tmp_path / "missing", tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists() and not work_dir_for(tmp_path / "x.h5").exists()


def test_embed_records_in_memory(images):
    ds = open_dataset(images)
    bb = tlkit.get_backbone("fake/image")
    runtime = resolve("extract", RuntimeOptions(precision="fp32", batch_size=5, workers=0))
    X, kept, skipped = embed_records(bb, ds.records, get_reader(ds), runtime=runtime)
    ref = direct_embeddings(tlkit.get_backbone("fake/image"), ds)
    assert kept == list(range(12)) and not skipped
    np.testing.assert_allclose(X, np.stack([ref[r.id] for r in ds.records]), rtol=1e-5, atol=1e-6)
