"""The default head (``auto``): the batched L-BFGS against scikit-learn, the cross-validation, the run it writes;
the floor on the standardisation scale; honest selection for ``--sweep`` and ``--layer auto``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _ft_helpers import FAST, image_data
from _heads_helpers import PlantedBackbone, image_split, make_cache

import tlkit
from tlkit.heads import train_head
from tlkit.heads.auto import (
    _Problem,
    fit_logistic,
    fit_logistic_cv,
    lbfgs,
    row_space,
    sklearn_c,
    stratified_folds,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n: int = 300, d: int = 12, c: int = 3, seed: int = 0, spread: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=gen) * spread
    y = torch.arange(n) % c
    x = centers[y] + torch.randn(n, d, generator=gen)
    return (x - x.mean(0)) / x.std(0), y


@pytest.mark.parametrize("lam", [1e-1, 1e-3])
def test_lbfgs_solves_what_scikit_learn_solves(lam):
    from sklearn.linear_model import LogisticRegression

    x, y = blobs()
    theta, _ = fit_logistic(x.double(), y, 3, lam)
    ref = LogisticRegression(C=sklearn_c(lam, len(x)), tol=1e-10, max_iter=10_000).fit(x.double().numpy(), y.numpy())
    assert np.allclose(theta[:, :-1].numpy(), ref.coef_, atol=5e-4)
    assert np.allclose(theta[:, -1].numpy(), ref.intercept_, atol=5e-4)


def test_batched_folds_equal_separate_fits():
    x, y = blobs(n=200, seed=1)
    x = x.double()
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    fold_of = stratified_folds(y, 4, seed=0)
    assert torch.equal(torch.bincount(fold_of), torch.full((4,), 50))  # even folds
    for f in range(4):  # each fold holds every class in proportion
        assert torch.bincount(y[fold_of == f], minlength=3).tolist() in ([17, 17, 16], [17, 16, 17], [16, 17, 17])
    mask = (fold_of.view(1, -1) != torch.arange(4).view(-1, 1)).double()
    batched = _Problem(xa, y, mask, 3, None)
    batched.lam = 1e-2
    together, _ = lbfgs(batched, torch.zeros(4, 3, x.shape[1] + 1, dtype=x.dtype), max_iter=500, gtol=1e-9)
    for f in range(4):
        alone, _ = fit_logistic(x[fold_of != f], y[fold_of != f], 3, 1e-2)
        assert torch.allclose(together[f], alone, atol=1e-4)


def test_cross_validation_reports_every_candidate_and_keeps_the_best():
    x, y = blobs(n=240, d=40, spread=0.35, seed=2)  # noisy: strong regularisation pays
    theta, sel = fit_logistic_cv(x, y, 3, folds=4, seed=0)
    assert sel.folds == 4 and len(sel.candidates) >= 4 and theta.shape == (3, 41)
    best = max(sel.candidates, key=lambda c: (-c.loss, c.accuracy))  # the lower CV loss, then accuracy
    assert sel.chosen == best
    assert all(0 <= c.accuracy <= 1 and c.accuracy_std >= 0 for c in sel.candidates)
    lams = [c.lam for c in sel.candidates]
    assert lams == sorted(lams, reverse=True)  # strong to weak, warm-started
    # too few items per class for folds: no CV, one fit on everything
    theta, sel = fit_logistic_cv(x[:3], y[:3], 3)
    assert sel.folds == 0 and sel.chosen is None and torch.isfinite(theta).all()


def test_fewer_rows_than_dimensions_fit_on_the_rows_span():
    x, y = blobs(n=60, d=200, spread=0.5, seed=3)
    x = x.double()
    z, basis = row_space(x)
    r = z.shape[1]  # centred rows: rank 59
    assert 59 <= r <= 60 and z.shape == (60, r) and basis.shape == (200, r)
    assert torch.allclose(basis.T @ basis, torch.eye(r, dtype=x.dtype), atol=1e-8)
    assert torch.allclose(x @ basis, z, atol=1e-8)
    assert row_space(x[:, :50]) is None  # more rows than dimensions: nothing to gain
    # the CV at one strength, solved on the span and mapped back, is the full-dimensional fit
    theta, sel = fit_logistic_cv(x, y, 3, folds=3, lambdas=[1e-2])
    full, _ = fit_logistic(x, y, 3, 1e-2)
    assert sel.chosen is not None and sel.chosen.lam == 1e-2 and theta.shape == (3, 201)
    assert torch.allclose(theta, full, atol=1e-4)


def test_the_path_is_refined_around_the_best():
    x, y = blobs(n=240, d=40, spread=0.35, seed=2)
    grid = [10.0 ** (1 - i) for i in range(6)]
    _, sel = fit_logistic_cv(x, y, 3, folds=4, seed=0, lambdas=grid)
    off_grid = [c.lam for c in sel.candidates if not any(abs(c.lam / g - 1) < 1e-9 for g in grid)]
    assert 1 <= len(off_grid) <= 2  # half a step either side of the best grid point
    assert all(min(abs(math.log10(lam / g)) for g in grid) == pytest.approx(0.5) for lam in off_grid)
    assert sel.chosen == max(sel.candidates, key=lambda c: (-c.loss, c.accuracy))  # the lower CV loss, then accuracy


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    backbone = PlantedBackbone("planted/auto")
    return {
        "root": root,
        "train": make_cache(image_split(root / "train", per_class=20, seed=0), root / "train.h5", backbone,
                            layers="all"),
        "test": make_cache(image_split(root / "test", per_class=10, seed=1), root / "test.h5", backbone,
                           layers="all"),
    }  # fmt: skip


def test_auto_is_the_default_trains_on_everything_and_records_its_choice(planted, tmp_path):
    from tlkit.inference.prediction import load_head_run

    result = train_head(planted["train"], tmp_path / "run", layer="signal")
    assert result.head == "auto" and result.n_val == 0 and result.n_train == 60
    sel = result.selection
    assert sel is not None and sel["folds"] == 5 and sel["chosen"]["cv_accuracy"] > 0.9
    assert {"lambda", "cv_accuracy", "cv_accuracy_std", "cv_loss"} <= set(sel["candidates"][0])
    assert "5-fold CV" in result.summary() and "CV accuracy" in result.summary()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["head"]["name"] == "linear" and config["head"]["selected_by"] == "auto"
    assert config["train"]["selection"]["chosen"] == sel["chosen"]
    run = load_head_run(tmp_path / "run")  # an ordinary linear head: predict and export take it as one
    evaluated = tlkit.evaluate(tmp_path / "run", planted["test"])
    assert evaluated.report.accuracy > 0.9
    assert isinstance(run.head, torch.nn.Linear)


def test_cli_prints_each_candidate(planted, tmp_path):
    from click.testing import CliRunner

    from tlkit.cli import cli

    out = CliRunner().invoke(cli, ["train", str(planted["train"]), "-o", str(tmp_path / "r"), "--layer", "signal"])
    assert out.exit_code == 0, out.output
    assert "5-fold cross-validation" in out.output and "CV accuracy" in out.output and " ± " in out.output


def test_layer_auto_selects_by_cross_validation(planted, tmp_path):
    result = train_head(planted["train"], tmp_path / "run", layer="auto", head="linear", epochs=5)
    layers = result.selection["layers"]
    assert result.layer == "signal" and set(layers) == {"early", "signal", "late", "features"}
    assert all(s["on"] == "cv" and s["accuracy_std"] is not None for s in layers.values())
    assert layers["signal"]["accuracy"] > 0.9 > max(layers[n]["accuracy"] for n in ("early", "late", "features"))
    on_val = train_head(planted["train"], tmp_path / "v", layer="auto", val=planted["test"])
    assert on_val.layer == "signal" and {s["on"] for s in on_val.selection["layers"].values()} == {"val"}


def test_sweep_selects_by_cross_validation_and_refits_on_everything(planted, tmp_path):
    grid = {"sweep_lrs": [1e-3, 1e-1], "sweep_wds": [0.0, 0.1], "epochs": 6}
    result = train_head(planted["train"], tmp_path / "run", layer="signal", sweep=True, **grid)
    assert result.n_val == 0 and result.n_train == 60 and len(result.sweep) == 4
    assert all(s.val_accuracy_std is not None for s in result.sweep)
    best = max(result.sweep, key=lambda s: (s.val_accuracy, -s.val_loss))
    assert (result.best_lr, result.best_weight_decay) == (best.lr, best.weight_decay)
    assert result.epochs_run == best.best_epoch and "by cross-validation" in result.summary()
    saved = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert "val_accuracy_std" in saved[0]
    # with a validation cache given, the sweep chooses on it (as before)
    on_val = train_head(planted["train"], tmp_path / "v", layer="signal", sweep=True, val=planted["test"], **grid)
    assert on_val.sweep is not None and on_val.sweep[0].val_accuracy_std is None and on_val.n_val == 30


class NearConstant(PlantedBackbone):
    """Final features: the colour (3 columns that separate the classes), a constant column, a column that also
    separates them but varies by 1e-7 only (the kind of feature the issue's 1.6e5 weight sat on), and 11 zeros."""

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        colour = batch.mean(dim=(2, 3))
        tiny = 1.0 + 1e-6 * (colour[:, :1] > colour[:, 1:2]).float()
        columns = [colour + 0.05 * self._noise(batch, 4.0)[:, :3], torch.full_like(tiny, 5.0), tiny]
        return torch.cat([*columns, torch.zeros(len(batch), 11)], 1)  # the spec's 16 columns: the rest constant


@pytest.mark.parametrize("options", [{}, {"head": "linear", "epochs": 30, "lr": 0.02}, {"sweep": True, "epochs": 10},
                                     {"head": "mlp", "epochs": 5}])  # fmt: skip
def test_no_blow_up_on_constant_and_near_constant_features(tmp_path, options):
    from safetensors.torch import load_file

    backbone = NearConstant("planted/near-constant")
    cache = make_cache(image_split(tmp_path / "d", per_class=20, seed=3), tmp_path / "c.h5", backbone)
    with tlkit.FeatureCache(cache) as fc:
        x = torch.as_tensor(np.asarray(fc.features[:], dtype=np.float32))
    assert float(x[:, 3].std()) == 0 and 0 < float(x[:, 4].std()) < 1e-6
    result = train_head(cache, tmp_path / "run", **options)
    state = load_file(str(tmp_path / "run" / "head.safetensors"))
    first = state["weight"] if "weight" in state else state["0.weight"]
    typical = float(x[:, :3].std(0).median())
    # without the floor the near-constant column's weight is (standardised weight) / 1e-7
    assert float(first.abs().max()) < 1e4 / typical
    from tlkit.inference.prediction import load_head_run

    head = load_head_run(tmp_path / "run").head
    moved = x.clone()
    moved[:, 4] += 1e-3  # the feature moves a little (a fine-tuned backbone, another precision)
    with torch.no_grad():
        assert float(head(x).abs().max()) < 100 and float(head(moved).abs().max()) < 1000
    assert result.accuracy > 0.8


def test_lp_ft_from_a_swept_probe_exports_and_passes_its_check(tmp_path):
    from tlkit.inference.export import export_model

    data = image_data(tmp_path / "data", per_class=8)
    cache = tlkit.extract("fake/image", data, tmp_path / "c.h5", workers=0, precision="fp32").path
    probe = train_head(cache, tmp_path / "probe", sweep=True, sweep_lrs=[1e-2, 1e-1], sweep_wds=[0.0], epochs=5)
    tlkit.finetune("fake/image", data, tmp_path / "ft", init_head=probe.run_dir, epochs=1, unfreeze="last:1", **FAST)
    result = export_model(tmp_path / "ft", "onnx")
    assert result.max_abs_diff <= 1e-4
