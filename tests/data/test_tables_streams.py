"""Parquet tables and Hugging Face ``datasets`` folders: real files on disk, image bytes / path / struct columns, text
columns, labels, row groups, a corrupt cell (a named skip) and shards by items — each extraction equal to the same
items read another way."""

from __future__ import annotations

import numpy as np
import pytest
from _extract_helpers import assert_same_cache
from _stream_helpers import CLASSES, http_server, png_bytes, write_folder

import tlkit
from tlkit.cache import FeatureCache, merge_caches
from tlkit.data.remote import REMOTE_COPIES_ENV
from tlkit.errors import BadInputError
from tlkit.host.readers import open_dataset

pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow: pip install 'tlkit[parquet]'")
pa = pytest.importorskip("pyarrow")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
API = {"precision": "fp32", "workers": 0, "batch_size": 4, "commit_rows": 8}
N = 24


def _by_key(path, key=lambda i: i) -> dict[str, np.ndarray]:
    with FeatureCache(path) as fc:
        return {key(i): x for i, x in zip(fc.ids, fc.features[()], strict=True)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same images as class folders, extracted with the folder reader: features by sample number."""
    root = tmp_path_factory.mktemp("ref")
    out = root / "ref.h5"
    tlkit.extract("fake/image", write_folder(root / "imgs", N), out, **API)
    return _by_key(out, lambda i: int(i.rsplit("/", 1)[1].removesuffix(".png")))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Two Parquet files (row groups of 5) with an image-bytes column, a path column, an HF-style struct column,
    a label column of class names; row 7 holds bytes that are not an image, row 9 a null."""
    root = tmp_path_factory.mktemp("pq")
    (root / "files").mkdir()
    for k in range(N):
        (root / "files" / f"{k}.png").write_bytes(png_bytes(k))
    for part, ks in enumerate((range(0, 12), range(12, N))):
        imgs = [None if k == 9 else (b"broken" if k == 7 else png_bytes(k)) for k in ks]
        cols = {
            "image": pa.array(imgs, pa.binary()),
            "path": [f"files/{k}.png" for k in ks],
            "hf": [{"bytes": None, "path": str(root / "files" / f"{k}.png")} for k in ks],
            "label": [CLASSES[k % 2] for k in ks],
            "k": list(ks),
        }
        pq.write_table(pa.table(cols), root / f"part-{part}.parquet", row_group_size=5)
    return root


def test_parquet_image_bytes_by_row_group(table, reference, tmp_path):
    ds = open_dataset(table, "image")
    assert ds.reader == "parquet-image" and len(ds) == N and ds.class_names == ["cat", "dog"]
    assert ds.records[13].id == "part-1.parquet:1" and ds.records[13].source[1:3] == (0, 1)
    out = tmp_path / "pq.h5"
    tlkit.extract("fake/image", f"{table}/*.parquet", out, **API)
    with FeatureCache(out) as fc:
        skipped = {s["id"]: s["reason"] for s in fc.skipped}
    assert skipped.keys() == {"part-0.parquet:7", "part-0.parquet:9"}
    assert "not an image" in skipped["part-0.parquet:7"] and "null" in skipped["part-0.parquet:9"]
    got = _by_key(out, lambda i: int(i.split(":")[1]) + (12 if i.startswith("part-1") else 0))
    assert got.keys() == set(range(N)) - {7, 9}
    assert all(np.allclose(got[k], reference[k], atol=1e-6) for k in got)


@pytest.mark.parametrize("workers", [0, 2])
def test_parquet_over_http_is_read_once(tmp_path, monkeypatch, workers):
    """Listing a remote table reads its footer and label column; extracting it copies the file once, whatever the
    number of workers (each reads the row groups of its own batches, from the copy), and equals the local run."""
    monkeypatch.setenv(REMOTE_COPIES_ENV, str(tmp_path / "copies"))
    (tmp_path / "t").mkdir()
    path = tmp_path / "t" / "big.parquet"  # 64x64 noise images: the footer is a small part of the file
    rows = {"image": [png_bytes(k, 64) for k in range(40)], "label": [CLASSES[k % 2] for k in range(40)]}
    pq.write_table(pa.table(rows), path, row_group_size=8)
    local = tmp_path / "local.h5"
    tlkit.extract("fake/image", path, local, **API)
    served = [0]
    with http_server(path.parent, served) as url:
        open_dataset(url + path.name, "image")
        listing = served[0]
        served[0] = 0
        out = tmp_path / "http.h5"
        tlkit.extract("fake/image", url + path.name, out, **{**API, "workers": workers})
    size = path.stat().st_size
    # The listing's small range reads, then the file once (two workers without the copy fetched it twice and more).
    assert listing < size / 5 and size <= served[0] - listing <= size + listing, (served[0], listing, size)
    assert_same_cache(out, local)


@pytest.mark.parametrize("column", ["path", "hf"])
def test_parquet_path_and_struct_columns(table, reference, tmp_path, column):
    out = tmp_path / f"{column}.h5"
    tlkit.extract("fake/image", table / "part-1.parquet", out, reader_options={"image_column": column}, **API)
    got = _by_key(out, lambda i: int(i.split(":")[1]) + 12)
    assert got.keys() == set(range(12, N)) and all(np.allclose(got[k], reference[k], atol=1e-6) for k in got)


def test_parquet_errors_name_the_column(table):
    with pytest.raises(BadInputError, match="no column 'img'; columns are image, path, hf, label, k"):
        open_dataset(table, "image", image_column="img")
    with pytest.raises(BadInputError, match="no column 'y'"):
        open_dataset(table, "image", label_column="y")
    with pytest.raises(BadInputError, match="missing.parquet: no such file"):
        open_dataset(table / "missing.parquet", "image")


def test_parquet_shards_by_items_merge_to_the_single_run(table, tmp_path):
    single = tmp_path / "single.h5"
    tlkit.extract("fake/image", table, single, **API)
    parts = [tmp_path / f"p{i}.h5" for i in range(2)]
    for i, part in enumerate(parts):
        tlkit.extract("fake/image", table, part, shard=f"{i}/2", **API)
    assert_same_cache(merge_caches(parts, tmp_path / "m.h5"), single)


def test_parquet_text(tmp_path, monkeypatch):
    texts = [f"{CLASSES[k % 2]} " * (1 + k % 7) + str(k) for k in range(20)]
    pq.write_table(pa.table({"body": texts, "y": [k % 2 for k in range(20)]}), tmp_path / "t.parquet",
                   row_group_size=6)  # fmt: skip
    ds = open_dataset(tmp_path / "t.parquet", "text", text_column="body", label_column="y")
    assert ds.reader == "parquet-text" and ds.class_names == ["0", "1"] and ds.records[3].length == len(texts[3])
    out = tmp_path / "t.h5"
    tlkit.extract("fake/text", tmp_path / "t.parquet", out, reader_options={"text_column": "body",
                                                                           "label_column": "y"}, **API)  # fmt: skip
    ref = tmp_path / "ref.h5"
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"{t},{k % 2}\n" for k, t in enumerate(texts)))
    tlkit.extract("fake/text", tmp_path / "t.csv", ref, **API)
    with FeatureCache(out) as a, FeatureCache(ref) as b:
        assert np.allclose(a.features[()], b.features[()], atol=1e-5) and list(a.labels) == list(b.labels)
    monkeypatch.setenv(REMOTE_COPIES_ENV, str(tmp_path / "copies"))
    served = [0]
    with http_server(tmp_path, served) as url:  # remote: listed from a copy (the text is the file), read from it too
        remote = tmp_path / "remote.h5"
        columns = {"text_column": "body", "label_column": "y"}
        tlkit.extract("fake/text", url + "t.parquet", remote, reader_options=columns, **{**API, "workers": 2})
    assert served[0] == (tmp_path / "t.parquet").stat().st_size
    assert_same_cache(remote, out)


def test_hf_datasets_folder(tmp_path, reference):
    datasets = pytest.importorskip("datasets", reason="needs datasets: pip install 'tlkit[hf-datasets]'")
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(png_bytes(k))) for k in range(N)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dog", "cat"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [1 - k % 2 for k in range(N)]}, features=features)
    datasets.DatasetDict({"train": ds.select(range(16)), "test": ds.select(range(16, N))}).save_to_disk(tmp_path / "dd")
    listed = open_dataset(tmp_path / "dd", "image")
    assert listed.reader == "hf-datasets-image" and listed.class_names == ["dog", "cat"]  # the ClassLabel's order
    assert len(listed) == 16 and listed.records[5].id == "train:5" and listed.records[5].label == 0
    out = tmp_path / "test.h5"
    tlkit.extract("fake/image", tmp_path / "dd", out, reader_options={"split": "test"}, **API)
    got = _by_key(out, lambda i: int(i.split(":")[1]) + 16)
    assert got.keys() == set(range(16, N)) and all(np.allclose(got[k], reference[k], atol=1e-6) for k in got)
    with pytest.raises(BadInputError, match="has splits train, test; choose one with split"):
        open_dataset(tmp_path / "dd", "image", split="val")
    texts = datasets.Dataset.from_dict({"text": [f"{CLASSES[k % 2]} {k}" for k in range(10)],
                                        "label": [CLASSES[k % 2] for k in range(10)]})  # fmt: skip
    texts.save_to_disk(tmp_path / "texts")
    listed = open_dataset(tmp_path / "texts", "text")
    assert (
        listed.reader == "hf-datasets-text"
        and listed.records[2].id == "texts:2"
        and listed.class_names == ["cat", "dog"]
    )
    res = tlkit.extract("fake/text", tmp_path / "texts", tmp_path / "texts.h5", **API)
    assert res.n_items == 10
