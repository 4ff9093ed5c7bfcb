"""Heads: every built-in head trains on a real cache, parameters parse with clear errors, estimators and k-NN banks
round-trip through their files, and a third-party plugin can add a head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _heads_helpers import image_split, make_cache, timm_backbone, timm_weights

import tlkit
from tlkit.errors import BadInputError, ConfigError, UnknownNameError
from tlkit.heads import train_head
from tlkit.heads.torch_heads import build_head, parse_params, split_head_name
from tlkit.inference.prediction import load_head_run


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    backbone = timm_backbone(timm_weights(root))
    train = make_cache(image_split(root / "train", per_class=20, seed=0), root / "train.h5", backbone)
    val = make_cache(image_split(root / "val", per_class=8, seed=1), root / "val.h5", backbone)
    return train, val


HEADS = [
    ("linear", {}),
    ("mlp", {}),
    ("knn", {}),
    ("sklearn:logreg", {}),
    ("sklearn:svm", {}),
    ("sklearn:ridge", {}),
    ("sklearn:rf", {}),
    ("sklearn:knn", {}),
    ("sklearn:sklearn.svm.LinearSVC", {}),
]


@pytest.mark.parametrize("head,kwargs", HEADS, ids=[h for h, _ in HEADS])
def test_every_head_separates_a_real_cache(caches, tmp_path, head, kwargs):
    train, val = caches
    result = train_head(train, tmp_path / "run", val=val, head=head, epochs=25, **kwargs)
    assert result.evaluated_on == "val" and result.n_val == 24
    assert result.accuracy >= 0.9, result.summary()  # three colour classes: chance is 0.33
    run = load_head_run(result.run_dir)
    x_val, y_val = tlkit.load_features(val)
    probs = run.probabilities(x_val)
    assert probs.shape == (24, 3) and np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == y_val).mean() == pytest.approx(result.accuracy)  # the saved head is the reported one
    files = {p.name for p in result.run_dir.iterdir()}
    weights = "head.skops" if head.startswith("sklearn") else "head.safetensors"
    assert {weights, "config.json", "metrics.jsonl", "report.json", "curves.png", "confusion.png"} <= files


def test_parse_params_values():
    params = parse_params(["C=0.5", "k=5", "hidden=512,256", "scale=false", "flag=True", "kernel=rbf", "x=[1, 2]"])
    assert params == {
        "C": 0.5,
        "k": 5,
        "hidden": [512, 256],
        "scale": False,
        "flag": True,
        "kernel": "rbf",
        "x": [1, 2],
    }
    assert split_head_name("sklearn:rf") == ("sklearn", {"estimator": "rf"})
    assert split_head_name("mlp") == ("mlp", {})


@pytest.mark.parametrize("bad", ["C", "=3", "C=", "1x=2", "a b=1"])
def test_malformed_param_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="--param") as info:
        parse_params([bad])
    assert repr(bad) in str(info.value)


def test_unknown_head_and_bad_parameters_name_the_fix():
    with pytest.raises(UnknownNameError, match="unknown head 'nope'.*tlkit heads"):
        build_head("nope", 4, 2)
    with pytest.raises(ConfigError, match="it accepts hidden, activation, dropout"):
        build_head("mlp", 4, 2, hiden=3)
    with pytest.raises(ConfigError, match="unknown parameter.*Cx; valid: C,"):
        build_head("sklearn", 4, 2, estimator="logreg", Cx=1)
    with pytest.raises(ConfigError, match="not a scikit-learn classifier"):
        build_head("sklearn", 4, 2, estimator="sklearn.linear_model.LinearRegression")
    with pytest.raises(ConfigError, match="unknown estimator 'forest'.*logreg, svm, ridge, rf, knn"):
        build_head("sklearn", 4, 2, estimator="forest")
    with pytest.raises(ConfigError, match="'nowhere.at_all.Classifier' is outside scikit-learn and not allowed"):
        build_head("sklearn", 4, 2, estimator="nowhere.at_all.Classifier")  # refused before any import
    from tlkit.heads.sklearn_head import allowing

    with allowing(["nowhere.at_all.Classifier"]), pytest.raises(ConfigError, match="cannot import 'nowhere.at_all'"):
        build_head("sklearn", 4, 2, estimator="nowhere.at_all.Classifier")
    with pytest.raises(ConfigError, match="k must be at least 1"):
        build_head("knn", 4, 2, k=0)


def test_knn_head_votes_and_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 3
    y = torch.arange(60) % 3
    x = centres[y] + torch.randn(60, 8, generator=gen)
    head = build_head("knn", 8, 3, k=5)
    head.fit_features(x, y)
    assert (head(x).argmax(1) == y).float().mean() > 0.95
    save_file(head.state_dict(), tmp_path / "knn.safetensors")
    fresh = build_head("knn", 8, 3, k=5)
    fresh.load_state_dict(load_file(tmp_path / "knn.safetensors"))
    assert fresh.bank.shape == (60, 8) and torch.equal(fresh(x), head(x))
    uniform = build_head("knn", 8, 3, k=1, weighting="uniform")
    uniform.fit_features(x, y)
    assert torch.equal(uniform(x).argmax(1), y)  # each point is its own nearest neighbour


def test_estimator_file_refuses_foreign_types(tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    from tlkit.heads.sklearn_head import load_estimator, save_estimator

    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    est = LogisticRegression().fit(x, y)
    save_estimator(est, tmp_path / "ok.skops")
    assert np.array_equal(load_estimator(tmp_path / "ok.skops").predict(x), est.predict(x))
    est.note = Foreign()  # anything outside scikit-learn/NumPy/SciPy must not be instantiated on load
    sio.dump(est, tmp_path / "bad.skops")
    with pytest.raises(BadInputError, match="Foreign.*refusing to load"):
        load_estimator(tmp_path / "bad.skops")
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a readable skops file"):
        load_estimator(tmp_path / "junk.skops")


class Foreign:
    pass


def cosine_head(in_dim: int, n_classes: int, scale: float = 10.0) -> torch.nn.Module:
    return CosineClassifier(in_dim, n_classes, scale)


class CosineClassifier(torch.nn.Module):
    def __init__(self, in_dim: int, n_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_classes, in_dim) * 0.01)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x, dim=1)
        return self.scale * x @ torch.nn.functional.normalize(self.weight, dim=1).T


class CosinePlugin:
    @tlkit.hookimpl
    def tlkit_register_heads(self, register):
        register("cosine", cosine_head, kind="torch", summary="cosine classifier (a test plugin)")


def test_a_plugin_adds_a_head_that_trains_and_predicts(caches, tmp_path, fresh_plugins):
    train, val = caches
    tlkit.register_plugin(CosinePlugin(), name="cosine-test")
    try:
        assert "cosine" in {e.name for e in tlkit.list_heads()}
        result = train_head(train, tmp_path / "run", val=val, head="cosine", head_params={"scale": 20.0}, lr=0.02)
        assert result.accuracy >= 0.9
        preds = tlkit.predict(result.run_dir, val)
        assert (preds.predicted == preds.labels).mean() == pytest.approx(result.accuracy)
    finally:
        tlkit.unregister_plugin("cosine-test")


def test_head_optimisers_match_torch_adamw():
    from tlkit.heads.probes import HeadAdamW, LinearProbeBank

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 12, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    grid = [(1e-3, 0.0), (1e-2, 0.1), (1e-1, 0.01)]
    init = torch.nn.Linear(12, 3)
    bank = LinearProbeBank(init, [g[0] for g in grid], [g[1] for g in grid], torch.device("cpu"))
    lone, ours = [], []
    for lr, wd in grid:
        for store, make in ((lone, torch.optim.AdamW), (ours, HeadAdamW)):
            head = torch.nn.Linear(12, 3)
            head.load_state_dict(init.state_dict())
            store.append((head, make(head.parameters(), lr=lr, weight_decay=wd)))
    for _ in range(30):
        idx = torch.randint(0, 64, (16,), generator=gen)
        bank.step(x[idx], y[idx])
        for head, opt in lone + ours:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(x[idx]), y[idx]).backward()
            opt.step()
    for i, ((ref, _), (mine, _)) in enumerate(zip(lone, ours, strict=True)):
        assert torch.allclose(ref.weight, mine.weight, atol=1e-6) and torch.allclose(ref.bias, mine.bias, atol=1e-6)
        assert torch.allclose(ref.weight, bank.weight[i], atol=1e-5)
        assert torch.allclose(ref.bias, bank.bias[i], atol=1e-5)
