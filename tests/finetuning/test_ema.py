"""``--ema``: the exponential moving average of the weights, its arithmetic, and that a run keeps the average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _ft_helpers import FAST, image_data
from safetensors.torch import load_file

import tlkit
from tlkit.errors import BadInputError
from tlkit.finetuning.ema import WeightAverage

pytestmark = pytest.mark.usefixtures("one_thread")


def _set(layer: torch.nn.Linear, value: float) -> None:
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(value)


def test_the_average_follows_the_warmed_up_decay() -> None:
    layer = torch.nn.Linear(3, 2)
    _set(layer, 1.0)
    average = WeightAverage(layer, decay=0.9)
    expected = 1.0
    for step, value in enumerate([3.0, -2.0, 5.0, 0.5] * 25, start=1):
        _set(layer, value)
        average.update()
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        assert torch.allclose(average.shadow[0], torch.full((2, 3), expected), rtol=1e-5)
    assert average.current_decay() == 0.9  # warmed up: (1 + 100) / (10 + 100) > 0.9


def test_applied_swaps_the_average_in_and_the_live_weights_back() -> None:
    layer = torch.nn.Linear(3, 2)
    _set(layer, 1.0)
    average = WeightAverage(layer, decay=0.5)
    _set(layer, 3.0)
    average.update()  # decay min(0.5, 2/11): 2/11 * 1 + 9/11 * 3
    live = layer.weight.detach().clone()
    with average.applied():
        assert torch.allclose(layer.weight, torch.full((2, 3), 2 / 11 + 27 / 11))
        assert layer.weight.requires_grad
    assert torch.equal(layer.weight, live)


def test_restore_round_trips_and_refuses_a_different_model() -> None:
    layer = torch.nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.9)
    _set(layer, 2.0)
    average.update()
    saved = {k: v.clone() for k, v in average.tensors().items()}
    assert set(saved) == {"ema.weight", "ema.bias"}

    other = WeightAverage(torch.nn.Linear(3, 2), decay=0.9)
    other.restore(saved, updates=1, source="ckpt")
    assert other.updates == 1 and all(torch.equal(a, b) for a, b in zip(other.shadow, average.shadow, strict=True))
    with pytest.raises(BadInputError, match="no weight average for 'bias'"):
        other.restore({"ema.weight": saved["ema.weight"]}, updates=1, source="ckpt")
    with pytest.raises(BadInputError, match=r"weight average of 'weight' has shape \(2, 3\), the model's \(2, 4\)"):
        WeightAverage(torch.nn.Linear(4, 2), decay=0.9).restore(saved, updates=1, source="ckpt")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_data(tmp_path_factory.mktemp("ema") / "data", classes=3, per_class=10)


def test_a_run_without_validation_keeps_the_average(data: Path, tmp_path: Path) -> None:
    """With nothing to validate on, the final model is the average of the last checkpoint, not the live weights."""
    options = {**FAST, "epochs": 2, "unfreeze": "all", "lr": 1e-2, "val_split": 0.0}
    tlkit.finetune("fake/image", data, tmp_path / "ema", ema=0.8, **options)
    final = load_file(str(tmp_path / "ema" / "model.safetensors"))
    last = load_file(str(tmp_path / "ema" / "checkpoints" / "last.safetensors"))
    averaged = {k[4:]: v for k, v in last.items() if k.startswith("ema.")}
    assert averaged and set(averaged) <= set(final)
    for key, value in averaged.items():
        assert torch.equal(final[key], value), key
    moved = [k for k in averaged if not torch.equal(last["model." + k], averaged[k])]
    assert moved, "the average equals the live weights: nothing was averaged"

    tlkit.finetune("fake/image", data, tmp_path / "plain", **options)
    plain = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert not any(
        k.startswith("ema.") for k in load_file(str(tmp_path / "plain" / "checkpoints" / "last.safetensors"))
    )
    assert not torch.equal(plain["head.weight"], final["head.weight"])


def test_what_is_validated_and_kept_is_the_average(data: Path, tmp_path: Path) -> None:
    """One epoch, no probe: the only candidate is epoch 1, so the kept model is that epoch's average."""
    options = {**FAST, "epochs": 1, "unfreeze": "all", "lr": 1e-2, "linear_probe": False}
    result = tlkit.finetune("fake/image", data, tmp_path / "run", ema=0.8, **options)
    assert result.best_epoch == 1
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    for key in (k for k in last if k.startswith("ema.")):
        assert torch.equal(final[key[4:]], last[key]), key
    assert not torch.equal(final["head.weight"], last["model.head.weight"])  # not the live weights


def test_only_what_some_phase_trains_is_averaged(data: Path, tmp_path: Path) -> None:
    tlkit.finetune("fake/image", data, tmp_path / "run", ema=0.8, epochs=1, unfreeze="last:1", **FAST)
    last = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    averaged = [k[4:] for k in last if k.startswith("ema.")]
    assert {k.split(".")[0] for k in averaged} == {"head", "backbone"}
    assert all(k.startswith(("head.", "backbone.stages.1.")) for k in averaged), averaged  # not stem, stages.0
