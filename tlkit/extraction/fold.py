"""BatchNorm folding for inference: an eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` is an affine map
per channel, so it can be merged into the convolution's weights and bias. The forward pass then skips one full read
and write of every activation map that passes through a BatchNorm (about 6 % of a ResNet-18 forward on a CPU in bf16;
``docs/benchmarks.md``, "Extraction throughput"). ``torch.jit.freeze`` and ``torch.compile(..., freezing)`` do the
same; timm's ``inference.py`` gets it from them.

The pairs are found by running the model once on a real batch with hooks, not by symbolic tracing, so it works for
any network (timm, torchvision, a plugin's own) and keeps the module tree (block names, ``embed_layers`` hooks). The
folded network is a *copy*: the caller's backbone is never changed, so it can still be fine-tuned. And the copy is
only used when it reproduces the original's output on that batch in fp32 (a conv output that is also read by
something other than the BatchNorm, a weight-standardised conv, a BatchNorm that is called twice...): otherwise the
original is used, unchanged.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

#: Relative tolerance of the check: the folded network's fp32 output may differ from the original's by at most this
#: fraction of the output's largest magnitude (folding reorders a multiply and an add per channel, nothing more).
FOLD_RTOL = 1e-4
#: Rows the backbone embeds to find and check the pairs: one sample row, through the original and the folded copy.
FOLD_CHECK_ROWS = 2


def _replacement(bn: nn.Module) -> nn.Module | None:
    """What a folded BatchNorm becomes: nothing (``Identity``) for a plain ``BatchNorm2d``; its dropout and
    activation for timm's ``BatchNormAct2d``; ``None`` for anything else (not folded)."""
    from torch import nn

    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(act, nn.Module):
        return nn.Sequential(drop if isinstance(drop, nn.Module) else nn.Identity(), act)
    return None


def _foldable(bn: nn.Module) -> bool:
    from torch import nn

    return (
        isinstance(bn, nn.BatchNorm2d)
        and bn.running_mean is not None
        and bn.running_var is not None
        and _replacement(bn) is not None
    )


def conv_bn_pairs(module: nn.Module, run: Callable[[nn.Module], Any]) -> tuple[list[tuple[str, str]], Any]:
    """``(pairs, output)``: ``(conv name, batchnorm name)`` for each BatchNorm whose input is the output of a
    convolution, seen in one call of ``run(module)``, and what that call returned. Only modules called exactly once
    are paired."""
    from torch import nn

    convs = {name: m for name, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    bns = {name: m for name, m in module.named_modules() if _foldable(m)}
    if not convs or not bns:
        return [], None
    produced: dict[int, tuple[str, Any]] = {}  # id(output) -> (conv name, output kept alive so ids stay unique)
    calls: dict[str, int] = {}
    inputs: dict[str, int] = {}

    def on_conv(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            produced[id(out)] = (name, out)

        return hook

    def on_bn(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if args:
                inputs[name] = id(args[0])

        return hook

    handles = [m.register_forward_hook(on_conv(n)) for n, m in convs.items()]
    handles += [m.register_forward_pre_hook(on_bn(n)) for n, m in bns.items()]
    try:
        output = run(module)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn_name, tid in inputs.items():
        if tid in produced and calls.get(bn_name) == 1:
            conv_name = produced[tid][0]
            if calls.get(conv_name) == 1:
                pairs.append((conv_name, bn_name))
    return pairs, output


def fold_batchnorm(module: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """A copy of ``module`` (eval mode) with each pair's BatchNorm merged into its convolution."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    folded = copy.deepcopy(module).eval()
    for conv_name, bn_name in pairs:
        conv = cast("nn.Conv2d", folded.get_submodule(conv_name))
        bn = cast("nn.BatchNorm2d", folded.get_submodule(bn_name))
        assert bn.running_mean is not None and bn.running_var is not None  # _foldable checked them
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        with torch.no_grad():
            conv.weight = w
            conv.bias = b
        parent_name, _, leaf = bn_name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        setattr(parent, leaf, _replacement(bn))
    return folded


def folded_copy(module: nn.Module, run: Callable[[nn.Module], torch.Tensor]) -> tuple[nn.Module, int]:
    """``(network, number of BatchNorms folded)``: a folded copy of ``module`` when it has foldable pairs and its
    output from ``run`` (an fp32 forward on a sample batch) matches the original's, else ``(module, 0)``."""
    import torch

    pairs, ref = conv_bn_pairs(module, run)
    if not pairs:
        return module, 0
    try:
        folded = fold_batchnorm(module, pairs)
        ref, got = ref.detach().float(), run(folded).detach().float()
    except (RuntimeError, ValueError, TypeError, AttributeError):  # a conv or norm this rule does not know
        return module, 0
    scale = float(ref.abs().max()) or 1.0
    if ref.shape != got.shape or not bool(torch.isfinite(got).all()):
        return module, 0
    if float((ref - got).abs().max()) > FOLD_RTOL * scale:
        return module, 0
    return folded, len(pairs)


__all__ = ["FOLD_CHECK_ROWS", "FOLD_RTOL", "conv_bn_pairs", "fold_batchnorm", "folded_copy"]
