"""TlkitEmbedder: estimator conventions, embeddings computed once across cross-validation folds, the estimator
checks (with the documented expected failures), and the cache round trip."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from _extract_helpers import write_images
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import tlkit
from tlkit.extraction.fold import FOLD_CHECK_ROWS
from tlkit.sklearn import EXPECTED_FAILED_CHECKS, ItemsError, TlkitEmbedder
from tlkit.testing.fake import FakeImageBackbone, FakeTextBackbone

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]


class CountingText(FakeTextBackbone):
    """Counts the items that go through a forward pass."""

    forwards = 0

    def embed(self, batch):
        type(self).forwards += int(batch["input_ids"].shape[0])
        return super().embed(batch)


class CountingImage(FakeImageBackbone):
    forwards = 0

    def embed(self, batch):
        type(self).forwards += int(batch.shape[0])
        return super().embed(batch)


def texts_and_labels(n=40, seed=0):
    rng = np.random.default_rng(seed)
    words = [["cat", "dog", "bird", "horse"], ["car", "bus", "train", "truck"]]
    texts = [" ".join(rng.choice(words[i % 2], int(rng.integers(2, 12)))) + f" #{i}" for i in range(n)]
    return texts, np.arange(n) % 2


@pytest.mark.parametrize("cache", [None, "file"])
def test_cross_val_score_embeds_each_item_once(cache, tmp_path):
    texts, y = texts_and_labels(40)
    CountingText.forwards = 0
    embedder = TlkitEmbedder(
        CountingText("test/counting-text"), cache=tmp_path / "emb.h5" if cache else None, precision="fp32"
    )
    scores = cross_val_score(make_pipeline(embedder, LogisticRegression(max_iter=2000)), texts, y, cv=5)
    assert CountingText.forwards == 40  # 5 folds x (fit + transform) would be 5 x 40 without reuse
    assert scores.mean() >= 0.8
    # a second, independent search reuses everything
    cross_val_score(make_pipeline(clone(embedder), LogisticRegression(max_iter=2000)), texts, y, cv=3)
    assert CountingText.forwards == 40


def test_image_paths_through_a_file_cache(tmp_path):
    root = write_images(tmp_path / "imgs", classes=2, per_class=6)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    labels = [0 if "class_0" in p else 1 for p in paths]
    CountingImage.forwards = 0
    emb = TlkitEmbedder(CountingImage("test/counting-image"), cache=tmp_path / "img.h5", precision="fp32")
    X = emb.fit_transform(paths[:8])
    # each item once, plus the BatchNorm-folding check's one-row forwards of each extraction
    assert X.shape == (8, 16) and X.dtype == np.float32 and CountingImage.forwards == 8 + FOLD_CHECK_ROWS
    X_all = clone(emb).fit(paths).transform(paths[::-1])  # new items only, and any order
    assert CountingImage.forwards == 12 + 2 * FOLD_CHECK_ROWS
    assert np.array_equal(X_all[::-1][:8], X)
    stamp = (tmp_path / "img.h5").stat().st_mtime_ns
    emb.transform(paths)  # all cached: the cache file is not even rewritten
    assert (tmp_path / "img.h5").stat().st_mtime_ns == stamp and CountingImage.forwards == 12 + 2 * FOLD_CHECK_ROWS
    # the cache is an ordinary tlkit cache keyed by absolute path
    with tlkit.FeatureCache(tmp_path / "img.h5") as fc:
        assert len(fc) == 12 and set(fc.ids) == set(paths)
    # it matches tlkit extract on the same folder
    tlkit.extract("fake/image", root, tmp_path / "ref.h5", precision="fp32", workers=0)
    R, y = tlkit.load_features(tmp_path / "ref.h5")
    with tlkit.FeatureCache(tmp_path / "ref.h5") as fc:
        order = [str(root / i) for i in fc.ids]
    np.testing.assert_allclose(emb.transform(order), R, rtol=1e-5, atol=1e-6)
    assert y.tolist() == [labels[paths.index(p)] for p in order]


def test_estimator_conventions(tmp_path):
    emb = TlkitEmbedder("fake/text", cache=tmp_path / "e.h5", precision="fp32")
    assert emb.get_params()["backbone"] == "fake/text" and not hasattr(emb, "backbone_")
    texts, _ = texts_and_labels(6)
    assert emb.fit(texts) is emb
    assert emb.backbone_.loaded is False  # fit does not load weights
    assert emb.embed_dim_ == 16 and emb.get_feature_names_out().tolist()[:2] == ["tlkit0", "tlkit1"]
    X = emb.transform(texts)
    again = pickle.loads(pickle.dumps(emb)).transform(texts)
    assert np.array_equal(X, again)
    perm = np.random.default_rng(0).permutation(6)
    assert np.array_equal(emb.transform([texts[i] for i in perm]), X[perm])
    with pytest.raises(ItemsError, match="1-D list"):
        emb.transform(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="expected a string"):
        emb.transform([1, 2])
    with pytest.raises(ItemsError, match="no such file"):
        TlkitEmbedder("fake/image").fit(["/nonexistent/x.png"])


def test_layer_from_the_cache(tmp_path):
    texts, _ = texts_and_labels(5)
    emb = TlkitEmbedder("fake/text", cache=tmp_path / "l.h5", layer="layer.0", precision="fp32")
    X = emb.fit_transform(texts)
    assert X.shape == (5, 16)
    final = TlkitEmbedder("fake/text", cache=tmp_path / "f.h5", precision="fp32").fit_transform(texts)
    assert not np.allclose(X, final)


class _AsIfNumeric(TlkitEmbedder):
    """The estimator with scikit-learn's default input tags, so that every check runs instead of being skipped."""

    def __sklearn_tags__(self):
        return super(TlkitEmbedder, self).__sklearn_tags__()


def test_true_tags_declare_string_input():
    tags = TlkitEmbedder().__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array


@parametrize_with_checks(
    [_AsIfNumeric("fake/text", precision="fp32")], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
