"""Mixup and CutMix (``mixup=``, ``cutmix=``): mixed images against targets mixed in the same proportion, images only,
and bad values refused with the option's name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _ft_helpers import FAST, image_data, snapshot

import tlkit
from tlkit.errors import ConfigError
from tlkit.finetuning.mixing import BatchMixer

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Item i is an image filled with the value i + 1, so every mixed pixel tells which items it came from."""
    x = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return x, torch.arange(n) % classes


def test_mixup_blends_each_item_with_its_partner_and_the_targets_by_the_same_weight() -> None:
    x, y = _batch()
    torch.manual_seed(0)
    mixed, targets = BatchMixer(mixup=0.4, cutmix=0.0, n_classes=3)(x, y)
    lam = float(mixed[0, 0, 0, 0] - 6) / (1 - 6)  # item 0 (value 1) is paired with item 5 (value 6)
    assert 0 < lam < 1
    expected = x * lam + x.flip(0) * (1 - lam)
    assert torch.allclose(mixed, expected)
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(targets, one_hot * lam + one_hot.flip(0) * (1 - lam))
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert torch.equal(x, _batch()[0])  # the input batch is not changed in place


def test_cutmix_pastes_a_box_and_weights_the_targets_by_the_area_each_item_keeps() -> None:
    x, y = _batch()
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    seen_boxes = 0
    for seed in range(8):
        torch.manual_seed(seed)
        mixed, targets = BatchMixer(mixup=0.0, cutmix=1.0, n_classes=3)(x, y)
        kept = float((mixed[0, 0] == 1).float().mean())  # share of item 0's pixels still its own
        assert torch.allclose(targets[0], one_hot[0] * kept + one_hot[5] * (1 - kept))
        assert bool(((mixed[0, 0] == 1) | (mixed[0, 0] == 6)).all())  # every pixel is from item 0 or its partner
        seen_boxes += kept < 1
    assert seen_boxes >= 4  # a box is pasted most of the time (Beta(1, 1) areas, clipped at the border)


def test_both_on_use_one_per_batch_and_off_changes_nothing() -> None:
    x, y = _batch()
    kinds = set()
    for seed in range(12):
        torch.manual_seed(seed)
        mixed, _ = BatchMixer(mixup=1.0, cutmix=1.0, n_classes=3)(x, y)
        values = set(mixed[0, 0].flatten().tolist())
        kinds.add("cutmix" if values <= {1.0, 6.0} else "mixup")
    assert kinds == {"cutmix", "mixup"}
    off = BatchMixer(0.0, 0.0, 3)
    mixed, targets = off(x, y)
    assert not off.active and mixed is x and torch.equal(targets, torch.nn.functional.one_hot(y, 3).float())


def test_the_same_seed_mixes_the_same_pairs() -> None:
    x, y = _batch()
    torch.manual_seed(7)
    a = BatchMixer(0.2, 1.0, 3)(x, y)
    torch.manual_seed(7)
    b = BatchMixer(0.2, 1.0, 3)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_run_with_mixing_trains_differently_and_completes(tmp_path: Path) -> None:
    data = image_data(tmp_path / "data", classes=3, per_class=8)
    common = {**FAST, "epochs": 2, "lr": 1e-2, "unfreeze": "all", "augment": "none", "label_smoothing": 0.1}
    plain = tlkit.finetune("fake/image", data, tmp_path / "plain", **common)
    mixed = tlkit.finetune("fake/image", data, tmp_path / "mixed", mixup=0.4, cutmix=1.0, **common)
    assert plain.epochs_run == mixed.epochs_run == 2
    from tlkit.finetuning.model import TransferModel

    a = snapshot(TransferModel.from_run(tmp_path / "plain"))
    b = snapshot(TransferModel.from_run(tmp_path / "mixed"))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert [r["train_loss"] for r in mixed.history] != [r["train_loss"] for r in plain.history]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mixup": -0.1}, "mixup is a Beta"),
        ({"cutmix": float("nan")}, "cutmix is a Beta"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
    ],
)
def test_bad_values_are_refused_by_name(tmp_path: Path, options: dict, message: str) -> None:
    data = image_data(tmp_path / "data", classes=2, per_class=4)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        tlkit.finetune("fake/image", data, tmp_path / "run", **{**FAST, **options})
    assert not (tmp_path / "run").exists()


def test_mixing_a_text_backbone_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    rows = ["text,label"] + [f"{w} {i},{lab}" for i in range(4) for w, lab in (("good", "pos"), ("bad", "neg"))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match="mixup mixes image batches; a text backbone"):
        tlkit.finetune("fake/text", tmp_path / "t.csv", tmp_path / "run", mixup=0.2, **FAST)
    assert not (tmp_path / "run" / "checkpoints").exists()
