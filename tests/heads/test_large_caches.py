"""Caches larger than memory: heads that fit on every row at once are refused with a one-line error naming the
streaming heads, ``linear`` streams, and the scikit-learn bridge's ``iter_batches`` and ``partial_fit`` train
incremental estimators batch by batch on a real cache."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _extract_helpers import CHILD_ENV, write_texts
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.naive_bayes import GaussianNB, MultinomialNB

import tlkit
from tlkit.errors import BadInputError, ConfigError
from tlkit.sklearn import iter_batches, partial_fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    out = root / "texts.h5"
    tlkit.extract("fake/text", write_texts(root / "texts.csv", n=120), out, precision="fp32", workers=0)
    return out


def test_iter_batches_covers_every_row_once_in_small_batches(cache):
    X_all, y_all = tlkit.load_features(cache)
    seen, sizes = [], []
    for X, y in iter_batches(cache, 16, seed=3):
        sizes.append(len(y))
        seen += [tuple(row) for row in X]
        assert X.dtype == np.float32 and y.dtype == np.int64
    assert max(sizes) <= 16 and sum(sizes) == len(y_all)
    assert sorted(seen) == sorted(tuple(row) for row in X_all)  # every row once, shuffled
    assert [tuple(r) for r in next(iter_batches(cache, 16, shuffle=False))[0]] == [tuple(r) for r in X_all[:16]]


@pytest.mark.parametrize("make", [lambda: SGDClassifier(random_state=0), GaussianNB])
def test_partial_fit_learns_the_classes_batch_by_batch(cache, make):
    X, y = tlkit.load_features(cache)
    calls = []

    class Recording(type(make())):  # the estimator itself, counting its partial_fit calls
        def partial_fit(self, X, y=None, classes=None, **kw):
            calls.append((len(X), None if classes is None else list(classes)))
            return super().partial_fit(X, y, classes=classes, **kw)

    est = Recording(**make().get_params())
    assert partial_fit(est, cache, epochs=3, batch_size=16) is est
    assert len(calls) == 3 * -(-len(y) // 16) and max(n for n, _ in calls) <= 16
    assert all(c == [0, 1] for _, c in calls)  # every class named on every call, as indices of class_names
    assert list(est.classes_) == [0, 1]
    assert (est.predict(X) == y).mean() >= 0.9


def test_unsupervised_estimators_get_features_only(cache):
    km = partial_fit(MiniBatchKMeans(n_clusters=2, random_state=0, n_init=1), cache, batch_size=32)
    assert km.cluster_centers_.shape == (2, tlkit.FeatureCache(cache).dim)


def test_estimators_that_cannot_learn_in_batches_are_refused(cache):
    with pytest.raises(ConfigError, match="LogisticRegression has no partial_fit"):
        partial_fit(LogisticRegression(), cache)
    with pytest.raises(ConfigError, match=r"MultinomialNB.partial_fit on .* failed: Negative values"):
        partial_fit(MultinomialNB(), cache)  # embeddings are signed: a one-line error, not a traceback
    with pytest.raises(ConfigError, match="epochs"):
        partial_fit(SGDClassifier(), cache, epochs=0)


def test_unlabelled_cache_is_refused_for_a_classifier(tmp_path):
    csv = tmp_path / "plain.csv"
    csv.write_text("text\n" + "\n".join(f"item number {i}" for i in range(12)) + "\n", encoding="utf-8")
    out = tmp_path / "plain.h5"
    tlkit.extract("fake/text", csv, out, precision="fp32", workers=0)
    with pytest.raises(BadInputError, match="no labels"):
        partial_fit(SGDClassifier(), out)
    assert sum(len(y) for _, y in iter_batches(out, 5, labelled=False)) == 12
    assert list(iter_batches(out, 5)) == []  # labelled rows only: none


@pytest.mark.parametrize("head", [None, "knn", "sklearn:logreg"])
def test_heads_that_need_every_row_are_refused_when_the_cache_does_not_fit(cache, head, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_MEMORY_BUDGET", "1K")  # the 120 x 16 features (7.5 kB) do not fit
    name = (head or "auto").split(":")[0]
    want = rf"head {name!r} fits on all \d+ training rows .* budget \(1.0 KiB\); train head linear or mlp, which stream"
    with pytest.raises(BadInputError, match=want) as info:
        tlkit.train_head(cache, tmp_path / "run", head=head)
    assert info.value.param == "head"
    assert not (tmp_path / "run" / "head.safetensors").exists()
    with pytest.raises(BadInputError, match="head 'sweep'"):
        tlkit.train_head(cache, tmp_path / "sweep", sweep=True)


def test_linear_head_streams_the_cache_that_does_not_fit(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_MEMORY_BUDGET", "1K")
    result = tlkit.train_head(cache, tmp_path / "run", head="linear", epochs=20)
    assert result.report.accuracy >= 0.9
    proc = subprocess.run(
        [sys.executable, "-m", "tlkit", "train", str(cache), "-o", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**CHILD_ENV, "TLKIT_MEMORY_BUDGET": "1K"},
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "--head linear or mlp" in err[0], proc.stderr
