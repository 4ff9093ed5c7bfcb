"""Phases and learning-rate shapes, and a real run whose phase transitions unfreeze exactly the named blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _ft_helpers import Recorder, changed_blocks, image_data

from tlkit.errors import ConfigError
from tlkit.finetuning.schedule import Phase, gradual_plan, lr_factor, parse_schedule, simple_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_schedule() -> None:
    plan = parse_schedule("head:2, last:1:2 ,last:3:4")
    assert plan.phases == (Phase("head", 2, 0), Phase("last:1", 2, 2), Phase("last:3", 4, 4))
    assert plan.total_epochs == 8
    assert [plan.phase_index(e) for e in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert plan.describe() == "head:2,last:1:2,last:3:4"
    named = parse_schedule("stages.0+stages.1:3,from:stem:1,all:1")
    assert [p.unfreeze for p in named.phases] == ["stages.0+stages.1", "from:stem", "all"]


@pytest.mark.parametrize("text", ["", "head", "last:1:x", "head:0", "last:q:2", ":3"])
def test_parse_schedule_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_schedule(text)


def test_simple_and_gradual_plans() -> None:
    assert simple_plan("last:2", 5, 1).describe() == "head:1,last:2:4"
    assert simple_plan("last:2", 3, 0).describe() == "last:2:3"
    with pytest.raises(ConfigError):
        simple_plan("all", 2, 3)
    plan = gradual_plan(["a", "b", "c"], epochs=8, head_epochs=1, every=2)
    assert plan.describe() == "head:1,c:2,b+c:2,a+b+c:3"
    short = gradual_plan(["a", "b", "c"], epochs=3, head_epochs=1, every=2)  # runs out before reaching "a"
    assert short.describe() == "head:1,c:2"
    with pytest.raises(ConfigError):
        gradual_plan([], 3, 1, 1)


def test_lr_factor_shapes() -> None:
    total = 100
    cos = [lr_factor(s, total, "cosine", warmup=0.1) for s in range(total)]
    assert cos[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])  # linear warm-up
    assert cos[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[10:], cos[11:], strict=False))  # then monotone cosine decay
    assert cos[-1] < 0.01
    one = [lr_factor(s, total, "onecycle") for s in range(total)]
    peak = max(range(total), key=lambda s: one[s])
    assert peak == 30 and one[0] == pytest.approx(1 / 25) and one[-1] < 0.01
    assert [lr_factor(s, 10, "constant", warmup=0.0) for s in range(10)] == [1.0] * 10


def test_phase_transitions_unfreeze_exactly_the_named_blocks(tmp_path: Path) -> None:
    data = image_data(tmp_path / "data")
    rec = Recorder(
        "fake/image",
        data,
        tmp_path / "run",
        schedule="head:1,last:1:1,stages.0+stem:1,all:1",
        val_split=0.0,
        lr=1e-2,
        backbone_lr_ratio=1.0,
        head="linear",
    )
    result = rec.run()
    assert result.plan == "head:1,last:1:1,stages.0+stem:1,all:1"
    expected = [[], ["stages.1"], ["stem", "stages.0"], ["stem", "stages.0", "stages.1"]]
    phases = [(e.epoch, e.trainable) for e in rec.events if e.kind == "phase"]
    assert phases == [(1, []), (2, ["stages.1"]), (3, ["stem", "stages.0"]), (4, expected[3])]
    for epoch, names in enumerate(expected):
        assert changed_blocks(rec.engine, rec.states[epoch], rec.states[epoch + 1]) == names, f"epoch {epoch + 1}"
    head_changed = [not torch.equal(rec.states[e]["head.weight"], rec.states[e + 1]["head.weight"]) for e in range(4)]
    assert head_changed == [True] * 4
    assert [r["unfrozen"] for r in result.history] == expected


def test_gradual_run_unfreezes_top_down(tmp_path: Path) -> None:
    data = image_data(tmp_path / "data")
    rec = Recorder(
        "fake/image",
        data,
        tmp_path / "run",
        gradual=True,
        gradual_every=1,
        epochs=4,
        val_split=0.0,
        lr=1e-2,
        backbone_lr_ratio=1.0,
        head="linear",
    )
    result = rec.run()
    assert result.plan == "head:1,stages.1:1,stages.0+stages.1:1,stem+stages.0+stages.1:1"
    got = [changed_blocks(rec.engine, rec.states[e], rec.states[e + 1]) for e in range(4)]
    assert got == [[], ["stages.1"], ["stages.0", "stages.1"], ["stem", "stages.0", "stages.1"]]
    since = {r.block: r.since_epoch for r in result.freeze}
    assert since == {"stem": 4, "stages.0": 3, "stages.1": 2, "head": 1}
