"""Blocks for any timm model, from its own ``group_matcher(coarse=True)``.

timm describes every model's coarse structure as regexes over parameter names (``stem``, ``blocks`` with a captured
stage index, and trailing parts such as a final norm marked with the ordinal ``99999``). This module turns that
grouping into readable, stable block names:

- the stem group is ``stem``;
- a numbered group is named by the module path its regex matched (``layer1``, ``stages.0``, ``blocks.11``);
- trailing parts (a final norm, EfficientNet's ``conv_head``) and the parameters no regex claims (ConvNeXt's
  ``head.norm``, ViT's ``fc_norm``) form one last block named by what it holds: ``head_norm``, ``head_conv`` or
  ``head_pre_logits``. (``head`` alone is reserved for tlkit's own head.)

Models without a ``group_matcher`` fall back to :func:`tlkit.plugin.blocks_from_children`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.plugin import Block, blocks_from_children

if TYPE_CHECKING:
    from torch import nn

#: timm's "merge with the previous group" ordinal (``timm.models._manipulate.MATCH_PREV_GROUP``).
MATCH_PREV = 99999.0


@dataclass
class _Rule:
    regex: re.Pattern[str]
    ordinal: int
    group: str
    suffix: tuple[float, ...]


@dataclass
class _Placed:
    key: tuple[float, ...]
    label: str | None
    captured: bool
    trailing: bool


def group_matcher(model: nn.Module) -> dict[str, Any] | Callable[[str], Any] | None:
    """The model's coarse group matcher, or ``None`` when it has none."""
    fn = getattr(model, "group_matcher", None)
    if fn is None:
        return None
    try:
        return fn(coarse=True)
    except (NotImplementedError, AssertionError, TypeError):
        return None


def timm_blocks(model: nn.Module) -> list[Block]:
    """Named blocks, earliest first, covering every parameter of ``model`` exactly once."""
    matcher = group_matcher(model)
    if matcher is None:
        return _rename_head(model, blocks_from_children(model))
    names = [n for n, _ in model.named_parameters()]
    if isinstance(matcher, dict):
        rules = _compile(matcher)
        placed = {n: _place(n, rules) for n in names}
    else:
        placed = {n: _place_callable(n, matcher) for n in names}

    body = [n for n in names if not placed[n].trailing]
    trailing = [n for n in names if placed[n].trailing]
    groups: list[list[str]] = []
    last_key: tuple[float, ...] | None = None
    for key in sorted({placed[n].key for n in body}):
        # timm's rule: a numbered part ending in MATCH_PREV (a stage's own final norm) joins the group before it.
        merge = groups and key[-1] == MATCH_PREV and last_key is not None
        members = [n for n in body if placed[n].key == key]
        if merge:
            groups[-1].extend(members)
        else:
            groups.append(members)
        last_key = key

    position = {n: i for i, n in enumerate(names)}
    blocks: list[Block] = []
    used: set[str] = set()
    for i, members in enumerate(groups):
        name = _unique(_group_label(members, placed, i), used, i)
        blocks.append(Block(name, tuple(sorted(members, key=position.__getitem__))))
    if trailing:
        blocks.append(Block(_unique(head_block_name(model, trailing), used, len(groups)), tuple(trailing)))
    return blocks


def _compile(matcher: dict[str, Any]) -> list[_Rule]:
    rules = []
    for ordinal, (group, spec) in enumerate(matcher.items()):
        if spec is None:
            continue
        specs = spec if isinstance(spec, list | tuple) else [(spec, None)]
        for pattern, suffix in specs:
            rules.append(_Rule(re.compile(pattern), ordinal, group, tuple(float(s) for s in (suffix or ()))))
    return rules


def _place(name: str, rules: list[_Rule]) -> _Placed:
    for rule in rules:
        m = rule.regex.match(name)
        if not m:
            continue
        caps = tuple(float(g) for g in m.groups() if g is not None)
        key = (float(rule.ordinal), *caps, *rule.suffix)
        trailing = not caps and bool(rule.suffix) and rule.suffix[-1] == MATCH_PREV
        return _Placed(key, _label(name, m.group(0), rule.group, caps), bool(caps), trailing)
    return _Placed((math.inf,), None, False, True)  # unclaimed: timm puts these last


def _place_callable(name: str, matcher: Callable[[str], Any]) -> _Placed:
    ordinal = matcher(name)
    key = tuple(float(o) for o in ordinal) if isinstance(ordinal, tuple | list) else (float(ordinal),)
    return _Placed(key, None, False, math.isinf(key[0]))


def _label(name: str, text: str, group: str, caps: tuple[float, ...]) -> str:
    """The readable label of one match: the stem group's name, else the matched module path."""
    if group.startswith("stem"):
        return group
    text = text.rstrip(".")
    at_boundary = name == text or name.startswith(text + ".")
    if at_boundary and text:
        return text
    return ".".join([group, *(str(int(c)) for c in caps)])


def _group_label(members: list[str], placed: dict[str, _Placed], index: int) -> str:
    labels = [placed[n].label for n in members if placed[n].label and placed[n].captured]
    labels = labels or [placed[n].label for n in members if placed[n].label]
    if labels:
        return labels[0]
    prefix = _common_prefix(members)
    if prefix:
        return prefix
    return "stem" if index == 0 else f"group.{index}"


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common)


def _unique(name: str, used: set[str], index: int) -> str:
    if name in used:
        name = f"{name}.{index}"
    used.add(name)
    return name


def _is_norm(m: Any) -> bool:
    from torch import nn

    return isinstance(m, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm) or "Norm" in type(m).__name__


def head_block_name(model: nn.Module, params: list[str]) -> str:
    """``head_norm`` (norms only), ``head_conv`` (convolutions and norms) or ``head_pre_logits`` (anything else)."""
    from torch import nn

    owners = [model.get_submodule(p.rsplit(".", 1)[0]) if "." in p else model for p in params]
    if all(_is_norm(m) for m in owners):
        return "head_norm"
    if all(_is_norm(m) or isinstance(m, nn.Conv2d) for m in owners):
        return "head_conv"
    return "head_pre_logits"


def _rename_head(model: nn.Module, blocks: list[Block]) -> list[Block]:
    """The generic split names a child ``head`` when the model has one; that word is tlkit's own head."""
    return [Block(head_block_name(model, list(b.params)), b.params) if b.name == "head" else b for b in blocks]


def feature_layers(model: nn.Module, blocks: list[Block]) -> list[tuple[int, str]]:
    """``(index into forward_intermediates' outputs, block name)`` for each block whose output timm reports.

    ``model.feature_info`` names the module behind each intermediate (``act1``, ``layer1``, ``blocks.3``). The
    intermediate belongs to the block holding that module's last parameter, or, for a module without parameters
    (``act1``), the block of the last parameter before it. When two intermediates fall in one block, the later wins.
    """
    info = getattr(model, "feature_info", None)
    if info is None or not hasattr(model, "forward_intermediates"):
        return []
    modules = [f["module"] if isinstance(f, dict) else f.get("module") for f in info]
    owner = {p: b.name for b in blocks for p in b.params}
    where: dict[str, str | None] = {}
    current: str | None = None
    for mname, mod in model.named_modules():
        own = [f"{mname}.{p}" if mname else p for p, _ in mod.named_parameters()]
        if own:
            where[mname] = owner.get(own[-1], current)
            direct = [f"{mname}.{p}" if mname else p for p, _ in mod.named_parameters(recurse=False)]
            if direct:
                current = owner.get(direct[-1], current)
        else:
            where[mname] = current
    chosen: dict[str, int] = {}
    for i, mname in enumerate(modules):
        block = where.get(mname)
        if block is not None:
            chosen[block] = i
    order = [b.name for b in blocks]
    return sorted(((i, b) for b, i in chosen.items()), key=lambda t: order.index(t[1]))
