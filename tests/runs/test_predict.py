"""predict and evaluate: round trips on raw files and on caches, the fingerprint guard, estimator runs, fine-tuned
runs, and clear errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from _heads_helpers import PlantedBackbone, image_split, make_cache, timm_backbone, timm_weights

import tlkit
from tlkit.errors import BadInputError, ConfigError, FingerprintMismatchError
from tlkit.heads import train_head
from tlkit.inference import Evaluation, Predictions


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    backbone = timm_backbone(timm_weights(root))
    train_dir = image_split(root / "train", per_class=15, seed=0)
    val_dir = image_split(root / "val", per_class=6, seed=1)
    train = make_cache(train_dir, root / "train.h5", backbone, layers="all")
    val = make_cache(val_dir, root / "val.h5", backbone, layers="all")
    return {
        "root": root,
        "backbone": backbone,
        "train": train,
        "val": val,
        "val_dir": val_dir,
        "mlp": train_head(train, root / "mlp", val=val).run_dir,
        "layer": train_head(train, root / "layer", val=val, head="linear", layer="blocks.3").run_dir,
        "logreg": train_head(train, root / "logreg", val=val, head="sklearn:logreg").run_dir,
    }


def test_predict_on_a_cache_writes_top_k_csv(runs, tmp_path):
    out = tmp_path / "p.csv"
    preds = tlkit.predict(runs["mlp"], runs["val"], output=out, top_k=2)
    assert isinstance(preds, Predictions) and len(preds) == 18
    assert np.allclose(preds.probabilities.sum(1), 1.0) and preds.probabilities.shape == (18, 3)
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "predicted", "probability", "label", "top1", "top1_probability", "top2",
                             "top2_probability"]  # fmt: skip
    with tlkit.FeatureCache(runs["val"]) as fc:
        assert [r["id"] for r in rows] == fc.ids
        assert [r["label"] for r in rows] == [fc.class_names[i] for i in fc.labels]
    for row, top in zip(rows, preds.top_k(2), strict=True):
        assert row["predicted"] == row["top1"] == top[0][0]
        assert float(row["top1_probability"]) >= float(row["top2_probability"])
    assert np.mean([r["predicted"] == r["label"] for r in rows]) >= 0.9


def test_predict_on_raw_files_matches_the_cache(runs, tmp_path):
    for run in ("mlp", "layer", "logreg"):
        from_cache = tlkit.predict(runs[run], runs["val"])
        from_files = tlkit.predict(runs[run], runs["val_dir"], output=tmp_path / f"{run}.csv", workers=0)
        assert from_files.ids == from_cache.ids
        assert np.allclose(from_files.probabilities, from_cache.probabilities, atol=1e-4)
        assert (tmp_path / f"{run}.csv").is_file()


def test_evaluate_on_raw_files_and_cache(runs, tmp_path):
    on_cache = tlkit.evaluate(runs["mlp"], runs["val"], output_dir=tmp_path / "ev-cache")
    on_files = tlkit.evaluate(runs["mlp"], runs["val_dir"], output_dir=tmp_path / "ev-files", workers=0)
    assert isinstance(on_files, Evaluation)
    assert on_files.accuracy == on_cache.accuracy >= 0.9
    assert on_files.report.confusion == on_cache.report.confusion
    report = json.loads((tmp_path / "ev-files" / "report.json").read_text())
    assert report["accuracy"] == on_files.accuracy and report["n"] == 18
    assert (tmp_path / "ev-files" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ev-files" / "predictions.csv").is_file()
    train_report = json.loads((runs["mlp"] / "report.json").read_text())  # train's report on the same val set
    assert train_report["accuracy"] == pytest.approx(on_cache.accuracy)


def test_fingerprint_guard_names_both(runs, tmp_path):
    other = PlantedBackbone("planted/image", weights="none")
    cache = make_cache(image_split(tmp_path / "imgs", per_class=3), tmp_path / "other.h5", other)
    with tlkit.FeatureCache(runs["val"]) as fc:
        expected = fc.fingerprint
    with pytest.raises(FingerprintMismatchError) as info:
        tlkit.predict(runs["mlp"], cache)
    message = str(info.value)
    assert other.fingerprint() in message and expected in message and "other.h5" in message
    resized = make_cache(
        runs["val_dir"], tmp_path / "96px.h5", timm_backbone(runs["backbone"].weights, input_size=[3, 96, 96])
    )
    with pytest.raises(FingerprintMismatchError, match="96px.h5"):
        tlkit.evaluate(runs["mlp"], resized)


def test_precision_is_recorded_at_fit_and_checked_at_predict(runs, tmp_path):
    recorded = json.loads((runs["mlp"] / "config.json").read_text())["extract"]["precision"]
    with tlkit.FeatureCache(runs["train"]) as fc:
        assert recorded == fc.key["precision"]
    other = "fp32" if recorded != "fp32" else "bf16"
    cache = make_cache(runs["val_dir"], tmp_path / "other.h5", runs["backbone"], precision=other)
    with pytest.raises(FingerprintMismatchError, match=f"computed in {other}, but the head .* on {recorded} features"):
        tlkit.predict(runs["mlp"], cache)
    # A head trained on features of the other precision embeds raw items in that precision, whatever auto means here.
    train = make_cache(runs["root"] / "train", tmp_path / "train-other.h5", runs["backbone"], precision=other)
    run = tlkit.train_head(train, tmp_path / "run", val=cache, head="linear", epochs=3).run_dir
    from_files = tlkit.predict(run, runs["val_dir"], workers=0)
    assert np.allclose(from_files.probabilities, tlkit.predict(run, cache).probabilities, atol=1e-4)
    # Asking for yet another precision would compute other features than the head saw: refused, naming the parameter.
    assert tlkit.predict(run, runs["val_dir"], workers=0, precision=other).ids == from_files.ids
    with pytest.raises(ConfigError, match=f"trained on {other} features; precision {recorded} would"):
        tlkit.predict(run, runs["val_dir"], workers=0, precision=recorded)


def test_class_order_is_matched_by_name(runs, tmp_path):
    subset = tmp_path / "subset"
    for name in ("class_2", "class_1"):  # two of the three classes: the reader numbers them 0 and 1
        shutil.copytree(runs["val_dir"] / name, subset / name)
    evaluation = tlkit.evaluate(runs["logreg"], subset, workers=0)
    assert evaluation.predictions.class_names == ["class_0", "class_1", "class_2"]
    assert sorted(set(evaluation.predictions.labels)) == [1, 2] and evaluation.accuracy >= 0.9
    stranger = tmp_path / "stranger"
    shutil.copytree(runs["val_dir"] / "class_0", stranger / "class_0")
    shutil.copytree(runs["val_dir"] / "class_1", stranger / "zebra")
    with pytest.raises(BadInputError, match="zebra are not among the run's classes"):
        tlkit.evaluate(runs["logreg"], stranger, workers=0)


def test_unlabelled_input_predicts_but_does_not_evaluate(runs, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((runs["val_dir"] / "class_1").iterdir()):
        shutil.copy(p, flat / p.name)
    preds = tlkit.predict(runs["mlp"], flat, workers=0)
    assert preds.labels is None and set(preds.predicted_names) == {"class_1"}
    with pytest.raises(BadInputError, match="no labels; evaluate needs a labelled set"):
        tlkit.evaluate(runs["mlp"], flat, workers=0)


def test_not_a_run_and_damaged_run(runs, tmp_path):
    with pytest.raises(BadInputError, match="not a tlkit run directory"):
        tlkit.predict(tmp_path, runs["val"])
    broken = tmp_path / "broken"
    shutil.copytree(runs["mlp"], broken)
    (broken / "head.safetensors").unlink()
    with pytest.raises(BadInputError, match="weights file missing"):
        tlkit.predict(broken, runs["val"])


def test_fine_tuned_run_predicts_and_evaluates_raw_items(runs, tmp_path):
    folder = image_split(tmp_path / "ft", per_class=6)
    result = tlkit.finetune("fake/image", folder, tmp_path / "ft-run", epochs=1, batch_size=8, workers=0)
    preds = tlkit.predict(result.run_dir, folder, output=tmp_path / "ft.csv")
    assert len(preds) == 18 and preds.class_names == ["class_0", "class_1", "class_2"]
    assert np.allclose(preds.probabilities.sum(1), 1.0)
    evaluation = tlkit.evaluate(result.run_dir, folder)
    assert evaluation.report.n == 18
    cache = make_cache(folder, tmp_path / "ft.h5", tlkit.get_backbone("fake/image"))
    with pytest.raises(BadInputError, match="fine-tuned model.*pass the raw items"):
        tlkit.predict(result.run_dir, cache)
