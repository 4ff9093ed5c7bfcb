"""The unfreeze spec, the freeze report, parameter groups and the BatchNorm policy, on the real fake/image CNN."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import tlkit
from tlkit.cli import cli
from tlkit.errors import ConfigError
from tlkit.finetuning.bn import BatchNormPolicy, bn_block_map
from tlkit.finetuning.freeze import freeze_preview, resolve_unfreeze
from tlkit.finetuning.model import TransferModel
from tlkit.finetuning.optim import backbone_rate, block_rates, build_param_groups, make_optimizer, set_group_rates
from tlkit.heads.torch_heads import build_head

NAMES = ["embeddings", "layer.0", "layer.1", "layer.10", "layer.11", "pooler"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("none", []),
        ("head", []),
        ("all", NAMES),
        ("last:0", []),
        ("last:2", ["layer.11", "pooler"]),
        ("from:layer.10", ["layer.10", "layer.11", "pooler"]),
        ("layer.0,pooler", ["layer.0", "pooler"]),
        ("pooler,layer.0", ["layer.0", "pooler"]),  # always in backbone order
        ("layer.1*", ["layer.1", "layer.10", "layer.11"]),
        ("layer.1?", ["layer.10", "layer.11"]),
        ("embeddings+layer.0", ["embeddings", "layer.0"]),
    ],
)
def test_resolve_unfreeze(spec: str, expected: list[str]) -> None:
    assert resolve_unfreeze(spec, NAMES) == expected


@pytest.mark.parametrize("spec", ["layer.2", "from:layer.99", "layer.0,nope", "stage*"])
def test_unknown_block_lists_available_names(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_unfreeze(spec, NAMES)
    msg = str(info.value)
    assert "unknown block" in msg
    assert ", ".join(NAMES) in msg


@pytest.mark.parametrize("spec", ["last:7", "last:-1", "last:x", "", "  "])
def test_malformed_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        resolve_unfreeze(spec, NAMES)


@pytest.fixture(scope="module")
def model() -> TransferModel:
    bb = tlkit.get_backbone("fake/image").load()
    torch.manual_seed(0)
    m = TransferModel(bb, build_head("linear", bb.spec.embed_dim, 3), ["a", "b", "c"])
    m.set_bn_policy("affine")
    return m


def test_set_trainable_follows_blocks(model: TransferModel) -> None:
    model.set_trainable(["stages.1"])
    blocks = {b.name: b for b in model.blocks}
    params = dict(model.backbone.named_parameters())
    for name in blocks["stem"].params + blocks["stages.0"].params:
        assert not params[name].requires_grad
    for name in blocks["stages.1"].params:
        assert params[name].requires_grad
    assert all(p.requires_grad for p in model.head.parameters())


def test_bn_layers_map_to_their_blocks(model: TransferModel) -> None:
    owner = bn_block_map(model.backbone, model.blocks)
    assert owner == {"stem.1": "stem", "stages.0.1": "stages.0", "stages.1.1": "stages.1"}


@pytest.mark.parametrize(
    ("policy", "bn_training", "bn_grad"),
    [("frozen", False, False), ("affine", False, True), ("train", True, True)],
)
def test_bn_policy_survives_train_calls(policy: str, bn_training: bool, bn_grad: bool) -> None:
    bb = tlkit.get_backbone("fake/image").load()
    m = TransferModel(bb, build_head("linear", 16, 2))
    m.set_bn_policy(policy)
    m.set_trainable(["stages.1"])
    for _ in range(2):
        m.train()  # torch puts every BN back in training mode; the policy must win each time
        frozen_bn, trainable_bn = m.backbone["stem"][1], m.backbone["stages"][1][1]
        assert not frozen_bn.training and not frozen_bn.weight.requires_grad
        assert trainable_bn.training is bn_training
        assert trainable_bn.weight.requires_grad is bn_grad
        assert m.backbone["stages"][1][0].weight.requires_grad  # the block's conv trains under every policy
        m.eval()
        assert not trainable_bn.training


def test_param_groups_cover_everything_once_and_skip_decay_on_norms(model: TransferModel) -> None:
    rates = block_rates([b.name for b in model.blocks], 1e-5)
    groups = build_param_groups(model.backbone, model.blocks, model.head, rates, 1e-3, 0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    named = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            is_plain = p.ndim <= 1
            assert g["weight_decay"] == (0.0 if is_plain else 0.05), named[id(p)]
    assert [g["name"] for g in groups if g["block"] == "head"] == ["head", "head/no_decay"]
    assert {g["block"] for g in groups} == {"stem", "stages.0", "stages.1", "head"}


def test_group_rates_discriminative_and_layer_decay(model: TransferModel) -> None:
    names = [b.name for b in model.blocks]
    assert backbone_rate(1e-3, None, None) == pytest.approx(1e-4)  # the measured default: head × 0.1
    assert backbone_rate(1e-3, None, None, "text") == pytest.approx(3e-5)  # text: × 0.03
    assert backbone_rate(2e-3, 0.1, None) == pytest.approx(2e-4)
    assert backbone_rate(1e-3, None, 3e-6) == pytest.approx(3e-6)
    with pytest.raises(ConfigError, match="not both"):
        backbone_rate(1e-3, 0.1, 1e-5)
    rates = block_rates(names, 1e-4, layer_decay=0.5)
    assert rates == pytest.approx({"stem": 2.5e-5, "stages.0": 5e-5, "stages.1": 1e-4})
    groups = build_param_groups(model.backbone, model.blocks, model.head, rates, 1e-3, 0.0)
    opt = make_optimizer("adamw", groups)
    set_group_rates(opt, ["stages.0", "stages.1"], factor=0.5)
    got = {g["name"]: g["lr"] for g in opt.param_groups}
    assert got["stem"] == 0.0 and got["stem/no_decay"] == 0.0  # frozen: present, at rate 0
    assert got["stages.0"] == pytest.approx(2.5e-5) and got["stages.1/no_decay"] == pytest.approx(5e-5)
    assert got["head"] == pytest.approx(5e-4)


def test_freeze_preview_rows() -> None:
    bb = tlkit.get_backbone("fake/image")
    rows = freeze_preview(bb, "last:1", lr=1e-3, layer_decay=0.5)
    assert [(r.block, r.trainable) for r in rows] == [("stem", False), ("stages.0", False), ("stages.1", True)]
    assert rows[2].lr == pytest.approx(1e-4) and rows[0].lr == 0.0
    assert rows[0].bn.startswith("eval (frozen") and "train" in rows[2].bn
    assert sum(r.params for r in rows) == sum(p.numel() for p in bb.module.parameters())


def test_policy_rejects_unknown_name(model: TransferModel) -> None:
    with pytest.raises(ConfigError, match="frozen, affine, train"):
        BatchNormPolicy(model.backbone, model.blocks, "sometimes")


def test_blocks_command_shows_freeze_report() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["blocks", "fake/image", "--unfreeze", "from:stages.0", "--json"])
    assert res.exit_code == 0, res.output
    import json

    rows = json.loads(res.output)
    assert [r["trainable"] for r in rows] == [False, True, True]
    res = runner.invoke(cli, ["blocks", "fake/image", "--unfreeze", "stages.7"])
    assert res.exit_code == 1
    assert "unknown block 'stages.7'" in res.output and "stem, stages.0, stages.1" in res.output
