"""Which backbone blocks train: the ``--unfreeze`` spec, resolved only through ``Backbone.blocks()``.

Spec grammar (the head always trains):

- ``none`` (or ``head``): head only, the whole backbone frozen;
- ``all``: every block;
- ``last:N``: the last N blocks (the top of the network, nearest the head);
- ``from:NAME``: block NAME and every block after it;
- block names and globs, comma-separated: ``stages.2,stages.3`` or ``layer.1*``. In a ``--schedule`` phase, where
  commas separate phases, join names with ``+`` instead (``stages.2+stages.3:2``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from tlkit.contract.backbone import Backbone, Block

HEAD_ONLY = ("none", "head")


def _names(blocks: Sequence[Block | str]) -> list[str]:
    return [b if isinstance(b, str) else b.name for b in blocks]


def _unknown(name: str, spec: str, names: list[str]) -> ConfigError:
    return ConfigError(
        f"unknown block {name!r} in unfreeze spec {spec!r}; the backbone's blocks are: {', '.join(names)} "
        f"(see `tlkit blocks BACKBONE`)"
    )


def resolve_unfreeze(spec: str, blocks: Sequence[Block | str]) -> list[str]:
    """The names of the blocks ``spec`` unfreezes, in the backbone's order (earliest first).

    Raises :class:`ConfigError` for a malformed spec or a block name the backbone does not have; the message
    lists the available block names. Blocks whose output does not reach the pooled embedding
    (``Block.reaches_output`` false) are not offered: ``all`` and ``last:N`` skip them, and naming one is an error.
    """
    unused = [b.name for b in blocks if not isinstance(b, str) and not b.reaches_output]
    names = [n for n in _names(blocks) if n not in unused]
    for part in (spec or "").replace("+", ",").replace("from:", "").split(","):
        if part.strip() in unused:
            raise ConfigError(
                f"block {part.strip()!r} in unfreeze spec {spec!r} does not reach the pooled embedding (its output is "
                f"unused), so training it changes nothing; the blocks to unfreeze are: {', '.join(names)}"
            )
    text = (spec or "").strip()
    if not text:
        raise ConfigError("empty unfreeze spec; use none, all, last:N, from:NAME or block names")
    low = text.lower()
    if low in HEAD_ONLY:
        return []
    if low == "all":
        return list(names)
    if low.startswith("last:"):
        raw = text[5:]
        try:
            n = int(raw)
        except ValueError:
            raise ConfigError(f"unfreeze spec {spec!r}: last:N needs a whole number, not {raw!r}") from None
        if n < 0 or n > len(names):
            raise ConfigError(
                f"unfreeze spec {spec!r}: the backbone has {len(names)} blocks ({', '.join(names)}); "
                f"use last:0 to last:{len(names)} or all"
            )
        return names[len(names) - n :] if n else []
    if low.startswith("from:"):
        start = text[5:].strip()
        if start not in names:
            raise _unknown(start, spec, names)
        return names[names.index(start) :]
    chosen: set[str] = set()
    for part in text.replace("+", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if part in names:
            chosen.add(part)
            continue
        matched = fnmatch.filter(names, part) if any(ch in part for ch in "*?[") else []
        if not matched:
            raise _unknown(part, spec, names)
        chosen.update(matched)
    return [n for n in names if n in chosen]


def check_unfreeze_syntax(spec: str) -> None:
    """Cheap checks that need no backbone (used to fail fast on options before a model loads)."""
    low = (spec or "").strip().lower()
    if not low:
        raise ConfigError("empty unfreeze spec; use none, all, last:N, from:NAME or block names")
    if low.startswith("last:"):
        try:
            if int(low[5:]) < 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"unfreeze spec {spec!r}: last:N needs a whole number ≥ 0") from None


def set_trainable(module: nn.Module, blocks: Sequence[Block], trainable: Sequence[str]) -> None:
    """Set ``requires_grad`` on every backbone parameter: True in the ``trainable`` blocks, False elsewhere."""
    on = set(trainable)
    params = dict(module.named_parameters())
    for block in blocks:
        flag = block.name in on
        for name in block.params:
            params[name].requires_grad_(flag)


@dataclass
class FreezeRow:
    """One line of the freeze report."""

    block: str
    params: int
    trainable: bool
    lr: float
    bn: str  # BatchNorm mode of the block's BN layers, "-" when it has none
    since_epoch: int | None = None  # first epoch (1-based) the block trains under a schedule
    adapter_params: int | None = None  # with adapters: the block's adapter parameters (``params``: its base weights)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def freeze_report(
    module: nn.Module,
    blocks: Sequence[Block],
    trainable: Sequence[str],
    block_lrs: Mapping[str, float],
    bn_modes: Mapping[str, str],
    head_params: int,
    head_lr: float,
    since_epoch: Mapping[str, int] | None = None,
    params: Mapping[str, int] | None = None,
    adapter_params: Mapping[str, int] | None = None,
) -> list[FreezeRow]:
    """The rows of the freeze report: every block, then the head. With adapters, ``params`` gives each block's base
    parameter count and ``adapter_params`` its adapter parameters."""
    on = set(trainable)
    since = dict(since_epoch or {})
    rows = [
        FreezeRow(
            block=b.name,
            params=params[b.name] if params is not None else b.n_params(module),
            trainable=b.name in on,
            lr=float(block_lrs.get(b.name, 0.0)) if b.name in on else 0.0,
            bn=bn_modes.get(b.name, "-"),
            since_epoch=since.get(b.name),
            adapter_params=adapter_params.get(b.name, 0) if adapter_params is not None else None,
        )
        for b in blocks
    ]
    rows.append(FreezeRow("head", head_params, True, float(head_lr), "-", 1 if since_epoch is not None else None))
    return rows


def format_report_rows(rows: Sequence[FreezeRow]) -> tuple[list[str], list[list[Any]]]:
    """Columns and cells for a table renderer (the CLI draws it)."""
    with_since = any(r.since_epoch is not None for r in rows)
    with_adapters = any(r.adapter_params is not None for r in rows)
    columns = ["block", "params", "trainable", "lr", "batchnorm"] + (["trains from epoch"] if with_since else [])
    if with_adapters:
        columns.insert(2, "adapter params")
    cells = []
    for r in rows:
        row: list[Any] = [r.block, r.params, "yes" if r.trainable else "no", f"{r.lr:.3g}" if r.lr else "0", r.bn]
        if with_since:
            row.append(str(r.since_epoch) if r.since_epoch else "-")
        if with_adapters:
            row.insert(2, r.adapter_params if r.adapter_params is not None else "-")
        cells.append(row)
    return columns, cells


def freeze_preview(
    backbone: Backbone,
    unfreeze: str,
    *,
    lr: float | None = None,
    backbone_lr_ratio: float | None = None,
    backbone_lr: float | None = None,
    layer_decay: float | None = None,
    bn_policy: str | None = None,
    adapter: str | None = None,
) -> list[FreezeRow]:
    """The freeze report for one unfreeze spec, without training (``tlkit blocks NAME --unfreeze SPEC``); with
    ``adapter`` (``"lora:r=8"``), the adapter parameters each block would train (on a copy of the module)."""
    import copy

    from tlkit.finetuning.adapters import attach_adapters, parse_adapter
    from tlkit.finetuning.bn import DEFAULT_BN_POLICY, BatchNormPolicy
    from tlkit.finetuning.optim import DEFAULT_HEAD_LR, backbone_rate, block_rates

    head_lr = DEFAULT_HEAD_LR if lr is None else lr
    module, blocks = backbone.module, backbone.blocks()
    trainable = resolve_unfreeze(unfreeze, blocks)
    spec = parse_adapter(adapter)
    counts: dict[str, Any] = {}
    if spec is not None:
        module = copy.deepcopy(module)
        adapters = attach_adapters(module, blocks, spec, trainable)
        blocks, trainable = adapters.blocks, [b for b in trainable if b in adapters.block_names]
        counts = {"params": adapters.base_params, "adapter_params": adapters.adapter_params}
    base = backbone_rate(head_lr, backbone_lr_ratio, backbone_lr, backbone.modality, adapters=spec is not None)
    rates = block_rates([b.name for b in blocks], base, layer_decay)
    policy = BatchNormPolicy(module, blocks, bn_policy or DEFAULT_BN_POLICY)
    policy.set_trainable(trainable)
    rows = freeze_report(module, blocks, trainable, rates, policy.block_modes(blocks), 0, head_lr, **counts)
    return rows[:-1]
