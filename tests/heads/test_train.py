"""Head training on real caches: the sweep, layer choice, views, determinism, early stopping, streaming, class
weights, the run directory, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _heads_helpers import PlantedBackbone, image_split, make_cache, timm_backbone, timm_weights

import tlkit
from tlkit.errors import BadInputError, ConfigError, FingerprintMismatchError, UnknownNameError
from tlkit.heads import train_head
from tlkit.runs.rundir import read_jsonl


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    backbone = timm_backbone(timm_weights(root))
    train_dir = image_split(root / "train", per_class=20, seed=0)
    return {
        "root": root,
        "backbone": backbone,
        "train_dir": train_dir,
        "train": make_cache(train_dir, root / "train.h5", backbone, layers="all", views=2),
        "val": make_cache(image_split(root / "val", per_class=8, seed=1), root / "val.h5", backbone),
    }


def head_state(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "head.safetensors"))


def test_sweep_picks_what_a_manual_loop_finds_best(data, tmp_path):
    lrs, wds = [1e-4, 1e-3, 3e-2], [0.0, 0.1]
    kwargs = {"val": data["val"], "epochs": 6, "batch_size": 16, "standardize": False}
    sweep = train_head(data["train"], tmp_path / "sweep", sweep=True, sweep_lrs=lrs, sweep_wds=wds, **kwargs)
    assert len(sweep.sweep) == 6 and {(s.lr, s.weight_decay) for s in sweep.sweep} == {(a, b) for a in lrs for b in wds}
    manual = {}
    for lr in lrs:
        for wd in wds:
            one = train_head(data["train"], tmp_path / f"m{lr}-{wd}", head="linear", lr=lr, weight_decay=wd, **kwargs)
            manual[(lr, wd)] = (one.report.accuracy, -one.history[one.best_epoch - 1]["val_loss"])
    best = max(manual.values())
    assert manual[(sweep.best_lr, sweep.best_weight_decay)] == pytest.approx(best, abs=1e-5)
    for s in sweep.sweep:  # every cell of the grid scored like its lone run
        assert s.val_accuracy == pytest.approx(manual[(s.lr, s.weight_decay)][0], abs=1e-6)
    assert (
        len({round(s.val_accuracy, 4) for s in sweep.sweep}) > 1
    )  # the grid really differs, so the pick means something
    grid = json.loads((sweep.run_dir / "sweep.json").read_text())
    assert len(grid) == 6 and json.loads((sweep.run_dir / "config.json").read_text())["head"]["name"] == "linear"


def test_layer_auto_picks_the_planted_layer(tmp_path):
    folder = image_split(tmp_path / "imgs", per_class=20)
    cache = make_cache(folder, tmp_path / "planted.h5", PlantedBackbone("planted/image", weights="none"), layers="all")
    result = train_head(cache, tmp_path / "run", layer="auto", head="linear", val_split=0.25)
    assert result.layer == "signal"
    assert set(result.layer_scores) == {"early", "signal", "late", "features"}
    assert result.layer_scores["signal"] >= 0.9 > max(v for k, v in result.layer_scores.items() if k != "signal")
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["layer"] == "signal" and config["head"]["in_dim"] == 16
    with tlkit.FeatureCache(cache) as fc:  # the saved head reads that layer
        preds = tlkit.predict(result.run_dir, cache)
        assert (preds.predicted == fc.labels).mean() >= 0.9


def test_named_layer_and_unknown_layer(data, tmp_path):
    result = train_head(data["train"], tmp_path / "run", layer="blocks.2")
    config = json.loads((result.run_dir / "config.json").read_text())
    with tlkit.FeatureCache(data["train"]) as fc:
        assert result.layer == config["layer"] == "blocks.2"
        assert config["head"]["in_dim"] == int(fc.layer("blocks.2").shape[1]) != fc.dim
    with pytest.raises(UnknownNameError, match="unknown layer 'blocks.9'"):
        train_head(data["train"], tmp_path / "bad", layer="blocks.9")
    with pytest.raises(BadInputError, match="layer auto needs cached layers.*--layers all"):
        train_head(data["val"], tmp_path / "bad2", layer="auto")


def test_views_change_the_batches_between_epochs(data):
    from tlkit.cache import FeatureCache
    from tlkit.heads.sources import feature_source
    from tlkit.heads.tables import FeatureTable

    with FeatureCache(data["train"]) as fc:
        source = feature_source(fc, None, data["train"])
        rows = np.arange(len(fc))
        views = np.asarray(fc.views[:])
        for in_memory in (True, False):
            table = FeatureTable(source, rows, torch.device("cpu"), in_memory=in_memory, use_views=True)
            gen = torch.Generator().manual_seed(0)
            epochs = [torch.cat([x for x, _ in table.batches(1000, gen)]) for _ in range(2)]
            for batch in epochs:  # every row is one of the cached views, never the clean features
                match = (np.abs(views[:, None] - batch.numpy()[None, :, None]).max(-1) < 1e-6).any(0)
                assert match.any(1).all()
            as_set = [{tuple(np.round(r, 5)) for r in b.numpy()} for b in epochs]
            assert as_set[0] != as_set[1]  # a different view of some items in epoch 2
            clean = FeatureTable(source, rows, torch.device("cpu"), in_memory=in_memory)
            gen = torch.Generator().manual_seed(0)
            plain = [{tuple(np.round(r, 5)) for r in torch.cat([x for x, _ in clean.batches(1000, gen)]).numpy()}]
            plain.append({tuple(np.round(r, 5)) for r in torch.cat([x for x, _ in clean.batches(1000, gen)]).numpy()})
            assert plain[0] == plain[1]


def test_views_train_and_are_recorded(data, tmp_path):
    result = train_head(data["train"], tmp_path / "run", val=data["val"], views=True, head="linear")
    assert result.accuracy >= 0.9
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["views"] is True
    with pytest.raises(BadInputError, match="no cached views; extract with --views K, or train without views"):
        train_head(data["val"], tmp_path / "nov", views=True, val_split=0.25)
    with pytest.raises(ConfigError, match="^views sample a view per epoch; head 'knn' is fitted once"):
        train_head(data["train"], tmp_path / "knn", views=True, head="knn")


def test_same_seed_same_result_other_seed_other_weights(data, tmp_path):
    runs = [
        train_head(data["train"], tmp_path / f"r{i}", head="mlp", epochs=4, seed=s) for i, s in enumerate((3, 3, 4))
    ]
    a, b, c = (head_state(r.run_dir) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [[{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(r.run_dir / "metrics.jsonl")]
               for r in runs[:2]]  # fmt: skip
    assert metrics[0] == metrics[1] and len(metrics[0]) == 4
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    # The planted backbone's final features are noise: an MLP memorises them and validation soon gets worse.
    folder = image_split(tmp_path / "imgs", per_class=20)
    cache = make_cache(folder, tmp_path / "noise.h5", PlantedBackbone("planted/image", weights="none"))
    result = train_head(cache, tmp_path / "run", val_split=0.3, head="mlp", lr=1e-2, epochs=80, early_stopping=3)
    assert result.stopped_early and result.epochs_run < 80
    assert result.epochs_run - result.best_epoch == 3
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    assert len(rows) == result.epochs_run and [r["epoch"] for r in rows] == list(range(1, result.epochs_run + 1))
    best = rows[result.best_epoch - 1]
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["train"]["best_epoch"] == result.best_epoch and config["train"]["stopped_early"]
    report = json.loads((result.run_dir / "report.json").read_text())  # the saved head is the best epoch's
    assert report["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)


def test_streaming_matches_memory(data, tmp_path, monkeypatch):
    kwargs = {"val": data["val"], "head": "linear", "epochs": 5}
    in_mem = train_head(data["train"], tmp_path / "mem", in_memory=True, **kwargs)
    streamed = train_head(data["train"], tmp_path / "stream", in_memory=False, **kwargs)
    a, b = head_state(in_mem.run_dir), head_state(streamed.run_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # one chunk: the same batches
    from tlkit.heads import tables as train_data

    monkeypatch.setattr(train_data, "CHUNK_BYTES", 4 * 256 * 16)  # 16 rows per chunk: many chunks
    from tlkit.cache import FeatureCache
    from tlkit.heads.sources import feature_source

    with FeatureCache(data["train"]) as fc:
        source = feature_source(fc, None, data["train"])
        table = train_data.FeatureTable(source, np.arange(0, len(fc), 2), torch.device("cpu"), in_memory=False)
        seen_x, seen_y = zip(*table.batches(8, torch.Generator().manual_seed(1)), strict=True)
        x, y = torch.cat(seen_x).numpy(), torch.cat(seen_y).numpy()
        order = np.lexsort(x.T[::-1])
        ref = np.asarray(fc.features[:])[::2]
        assert np.allclose(x[order], ref[np.lexsort(ref.T[::-1])]) and sorted(y) == sorted(fc.labels[::2])
    result = train_head(data["train"], tmp_path / "many", in_memory=False, **kwargs)
    assert result.accuracy >= 0.9


def test_balanced_class_weights(data, tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    from tlkit.heads.tables import class_weights

    y = torch.tensor([0] * 30 + [1] * 6 + [2] * 4)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    assert np.allclose(class_weights(y, 3).numpy(), expected)
    result = train_head(data["train"], tmp_path / "run", val=data["val"], class_weight="balanced", head="linear")
    assert result.accuracy >= 0.9
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["class_weight"] == "balanced"


def test_run_directory_config(data, tmp_path):
    result = train_head(data["train"], tmp_path / "run", val=data["val"], head="mlp", head_params={"hidden": [32]})
    config = json.loads((result.run_dir / "config.json").read_text())
    with tlkit.FeatureCache(data["train"]) as fc:
        assert config["kind"] == "head"
        assert config["backbone"]["name"] == "timm/test_efficientnet"
        assert config["backbone"]["fingerprint"] == fc.fingerprint
        assert config["backbone"]["weights"] == str(data["backbone"].weights)
        assert config["head"] == {"name": "mlp", "kind": "torch", "params": {"hidden": [32]}, "in_dim": fc.dim,
                                  "n_classes": 3}  # fmt: skip
        assert config["class_names"] == fc.class_names and config["layer"] is None
    report = json.loads((result.run_dir / "report.json").read_text())
    assert {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion"} <= set(report)
    assert report["evaluated_on"] == "val" and len(report["per_class"]) == 3
    assert (result.run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (result.run_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(BadInputError, match="already holds a run; pass overwrite to replace it"):
        train_head(data["train"], tmp_path / "run", val=data["val"])
    again = train_head(data["train"], tmp_path / "run", val=data["val"], head="knn", overwrite=True)
    assert (
        not (again.run_dir / "sweep.json").exists()
        and json.loads((again.run_dir / "config.json").read_text())["head"]["name"] == "knn"
    )


def test_bad_input_messages(data, tmp_path):
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    for p in sorted((data["train_dir"] / "class_0").iterdir())[:6]:
        (unlabelled / p.name).write_bytes(p.read_bytes())
    cache = make_cache(unlabelled, tmp_path / "flat.h5", data["backbone"])
    with pytest.raises(BadInputError, match="flat.h5: the cache has no labels"):
        train_head(cache, tmp_path / "r1")
    few = image_split(tmp_path / "few", classes=2, per_class=1)
    few_cache = make_cache(few, tmp_path / "few.h5", data["backbone"])
    with pytest.raises(BadInputError, match="class 'class_0' has 1 item; val_split 0.2 needs at least 2 per class"):
        train_head(few_cache, tmp_path / "r2", head="mlp")  # the auto head holds nothing out
    with pytest.raises(ConfigError, match="give val or val_split, not both"):
        train_head(data["train"], tmp_path / "r3", val=data["val"], val_split=0.2)
    with pytest.raises(ConfigError, match="^early_stopping needs validation data"):
        train_head(data["train"], tmp_path / "r4", val_split=0, early_stopping=2)
    with pytest.raises(ConfigError, match="head 'mlp': a sweep trains linear probes; drop the head or the sweep"):
        train_head(data["train"], tmp_path / "r5", sweep=True, head="mlp")
    with pytest.raises(UnknownNameError, match="unknown head 'mpl'; did you mean 'mlp'"):
        train_head(data["train"], tmp_path / "r6", head="mpl")
    other = make_cache(image_split(tmp_path / "o", per_class=3), tmp_path / "other.h5", PlantedBackbone("p/x"))
    with pytest.raises(FingerprintMismatchError, match="^val .*other.h5: its features come from backbone fingerprint"):
        train_head(data["train"], tmp_path / "r7", val=other)
    assert not (tmp_path / "r1" / "config.json").exists()  # a failed run leaves no complete-looking run


def test_no_validation_reports_on_training_set(data, tmp_path):
    result = train_head(data["train"], tmp_path / "run", val_split=0, head="linear", epochs=5)
    assert result.evaluated_on == "train" and result.n_val == 0 and result.best_epoch == 5
    assert "training set (no validation)" in result.summary()
