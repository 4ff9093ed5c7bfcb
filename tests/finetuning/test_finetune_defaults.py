"""The default recipe on real weights and real data: ``tlkit.finetune`` with no training options fits a linear probe
on frozen features first (LP-FT), starts the head from it, and trains every block its freeze report claims."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tlkit
from tlkit.finetuning.options import FinetuneOptions

pytestmark = pytest.mark.usefixtures("one_thread")


class _Snapshots:
    """The model's state when training starts and when it ends (the engine's ``start`` and ``done`` events)."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.message = ""

    def bind(self, engine: Any) -> None:
        self.engine = engine

    def __call__(self, ev: Any) -> None:
        state = {k: v.detach().clone() for k, v in self.engine.model.state_dict().items()}
        if ev.kind == "start":
            self.start, self.message = state, ev.message
        elif ev.kind == "epoch_end":
            self.end = state


def test_default_recipe_starts_from_a_probe_and_trains_every_block_it_claims(
    tmp_path: Path, fashion_mnist_folder: Any
) -> None:
    pytest.importorskip("tlkit_effnet_lite", reason="pip install -e plugins/examples/tlkit-effnet-lite")
    from tlkit.finetuning.engine import Finetuner
    from tlkit.finetuning.options import FinetuneInputs
    from tlkit.runtime import resolve

    train = fashion_mnist_folder(tmp_path / "train", "train", 6, seed=0)
    backbone = tlkit.get_backbone("effnet/lite0", preprocess={"input_size": [3, 32, 32]})
    # the defaults, but one epoch (the default count is what docs/finetuning.md measured) and a cheap runtime
    opts = FinetuneOptions.from_kwargs({"epochs": 1, "workers": 0, "device": "cpu", "precision": "fp32"})
    snaps = _Snapshots()
    engine = Finetuner(
        FinetuneInputs(backbone, train, tmp_path / "run"), opts, resolve("finetune", opts.runtime_options(), env=False),
        callback=snaps,
    )  # fmt: skip
    snaps.bind(engine)
    result = engine.run()

    # LP-FT: a probe on the 50 frozen training embeddings (10 of 60 held out for validation), no head-only epoch
    assert "linear probe on 50 frozen embeddings" in snaps.message
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["head"]["name"] == "linear" and config["init_head"]["auto"] is True
    assert config["init_head"]["items"] == 50 and 0.0 <= config["init_head"]["cv_accuracy"] <= 1.0
    # the message names the cross-validation and, when the probe was tempered to the loss floor, the temperature
    assert "cross-validated accuracy" in snaps.message and "too few per class" not in snaps.message
    temperature = config["init_head"]["temperature"]
    assert temperature >= 1.0 and ("logits divided by" in snaps.message) == (temperature > 1.0)
    assert result.plan == "all:1"
    # the head starts from that probe, not at random
    probe = engine.built.start
    assert probe is not None and torch.equal(snaps.start["head.weight"], probe.state["weight"])
    # every block the report claims as trainable trains (all of them by default): each one's weights moved
    claimed = [row.block for row in result.freeze if row.trainable and row.block != "head"]
    assert claimed == [b.name for b in engine.model.blocks] and len(claimed) >= 5
    for block in engine.model.blocks:
        keys = [f"backbone.{p}" for p in block.params]
        moved = [k for k in keys if not torch.equal(snaps.start[k], snaps.end[k])]
        assert moved, f"block {block.name} is claimed trainable but none of its {len(keys)} tensors changed"
    # the backbone learns at a tenth of the head's rate (the measured default ratio), with a light augmentation
    rates = {r.block: r.lr for r in result.freeze if r.trainable and r.block != "head"}
    assert list(rates.values()) == pytest.approx([1e-4] * len(rates))
    assert engine.train_items.backbone.augment == "light"


def test_a_run_that_never_beats_its_start_probe_keeps_the_probe(tmp_path: Path) -> None:
    from _ft_helpers import Recorder, image_data
    from safetensors.torch import load_file

    data = image_data(tmp_path / "data", classes=3, per_class=10)
    # a rate so small that no weight moves: no epoch can beat the model as it started (frozen backbone + probe)
    rec = Recorder("fake/image", data, tmp_path / "run", epochs=2, lr=1e-30)
    result = rec.run()
    assert rec.engine.built.start is not None and result.best_epoch == 0  # epoch 0 is the start, validated
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert torch.equal(saved["head.weight"], rec.engine.built.start.state["weight"])
    assert "best epoch 0/2" in result.summary()


def test_the_start_probe_is_tempered_to_the_loss_floor_and_keeps_its_predictions(
    tmp_path: Path, fashion_mnist_folder: Any
) -> None:
    """A probe fitted to near-zero training loss leaves fine-tuning no gradient to adapt the features with: its logits
    are divided by the temperature that lifts the loss on the frozen training features to the floor (a fraction of
    ln K), and no prediction changes. A floor of 0 starts from the probe as fitted."""
    import math

    pytest.importorskip("tlkit_effnet_lite", reason="pip install -e plugins/examples/tlkit-effnet-lite")
    from tlkit.finetuning.probe_head import fit_start_probe, frozen_features
    from tlkit.host.readers import open_dataset
    from tlkit.runtime import RuntimeOptions, resolve

    train = fashion_mnist_folder(tmp_path / "train", "train", 6, seed=0)
    backbone = tlkit.get_backbone("effnet/lite0", preprocess={"input_size": [3, 32, 32]})
    dataset = open_dataset(train, modality="image")
    runtime = resolve("finetune", RuntimeOptions.of(device="cpu", precision="fp32", workers=0), env=False)
    x, y = (torch.from_numpy(a) for a in frozen_features(backbone, dataset, runtime))
    k = len(dataset.class_names)

    def logits(state: dict[str, torch.Tensor]) -> torch.Tensor:
        return x @ state["weight"].T + state["bias"]

    fitted = fit_start_probe(backbone, dataset, k, runtime, 16, loss_floor=0.0)
    floored = fit_start_probe(backbone, dataset, k, runtime, 16, loss_floor=0.5)
    assert fitted.temperature == 1.0
    loss = float(torch.nn.functional.cross_entropy(logits(fitted.state), torch.as_tensor(y).long()))
    assert loss < 0.5 * math.log(k)  # 60 items of 10 classes in 1,280-d: the probe fits its training set closely
    assert floored.temperature > 1.0 and floored.train_loss == pytest.approx(loss, rel=1e-3)
    tempered = float(torch.nn.functional.cross_entropy(logits(floored.state), torch.as_tensor(y).long()))
    assert tempered == pytest.approx(0.5 * math.log(k), rel=1e-3)
    assert floored.start_loss == pytest.approx(tempered, rel=1e-3)
    assert torch.equal(logits(floored.state).argmax(1), logits(fitted.state).argmax(1))
    assert torch.allclose(floored.state["weight"] * floored.temperature, fitted.state["weight"], rtol=1e-4, atol=1e-6)
    # a floor the probe is already above changes nothing
    above = fit_start_probe(backbone, dataset, k, runtime, 16, loss_floor=loss / math.log(k) * 0.9)
    assert above.temperature == 1.0 and torch.equal(above.state["weight"], fitted.state["weight"])


def test_a_start_probe_too_small_to_cross_validate_is_still_tempered_and_named(tmp_path: Path) -> None:
    from _ft_helpers import Recorder, image_data

    data = image_data(tmp_path / "data", classes=3, per_class=1)
    rec = Recorder("fake/image", data, tmp_path / "run", epochs=1, val_split=0.0, probe_loss_floor=0.9)
    rec.run()
    start = rec.engine.built.start
    assert start is not None and start.summary()["cv_accuracy"] is None
    assert rec.engine.start_message.startswith("linear probe on 3 frozen embeddings (too few per class")
    # three items fitted by the middle of the grid leave less than 0.9 of chance: tempered, and the message says so
    assert start.temperature > 1.0 and "logits divided by" in rec.engine.start_message
