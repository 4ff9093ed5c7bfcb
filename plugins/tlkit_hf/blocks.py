"""Blocks from a transformers model's own module names, and per-layer outputs captured in one forward pass.

Every family is described by the same three parts: blocks before the layer stack (``embeddings``,
``feature_extractor``, ...), one block per layer of the stack (found as the ``nn.ModuleList`` holding
``num_hidden_layers`` modules), and blocks after it (``pooler``). Parameters that no part names are placed by what
they are: embedding-like ones (``rel_embeddings``, ``relative_attention_bias``) join the first block, the rest (final
layer norms, adapters) join the last layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.plugin import Block, blocks_from_prefixes

if TYPE_CHECKING:
    import torch
    from torch import nn

_EARLY = re.compile(r"(^|\.)(rel_embeddings|relative_attention_bias|embeddings?_\w+|\w+_embeddings?)(\.|$)")


def is_embedding_like(param_name: str) -> bool:
    return bool(_EARLY.search(param_name))


def find_layer_list(module: nn.Module, n_layers: int) -> str | None:
    """The dotted name of the ``nn.ModuleList`` holding the ``n_layers`` transformer layers, or ``None``."""
    from torch import nn

    found = [
        name
        for name, m in module.named_modules()
        if name and isinstance(m, nn.ModuleList) and len(m) == n_layers and n_layers > 0
    ]
    preferred = [n for n in found if n.rsplit(".", 1)[-1] in ("layer", "layers")]
    pick = preferred or found
    return min(pick, key=lambda n: n.count(".")) if pick else None


def has_child(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


@dataclass
class BlockLayout:
    """How a model divides into blocks: ``before`` and ``after`` are ``(block, [param prefixes])`` pairs."""

    layers_path: str | None
    layer_label: str
    n_layers: int
    before: list[tuple[str, list[str]]] = field(default_factory=list)
    after: list[tuple[str, list[str]]] = field(default_factory=list)
    rest_label: str = "encoder"  # the single block for the layers when there is no layer list (ALBERT shares one)
    #: blocks whose output the backbone's pooling never reads (the pooler under mean pooling): not offered for training
    unused: Sequence[str] = ()

    def layer_block(self, i: int) -> str:
        return f"{self.layer_label}.{i}"

    def blocks(self, module: nn.Module) -> list[Block]:
        groups: list[tuple[str, list[str]]] = [(n, list(p)) for n, p in self.before if p]
        if self.layers_path is not None:
            groups += [(self.layer_block(i), [f"{self.layers_path}.{i}"]) for i in range(self.n_layers)]
            last = self.layer_block(self.n_layers - 1)
        else:
            last = self.rest_label
        groups += [(n, list(p)) for n, p in self.after if p]
        names = [n for n, _ in groups]
        if last not in names:
            groups.append((last, []))
            names.append(last)
        first = groups[0][0]
        prefixes = [p for _, ps in groups for p in ps]
        for pname, _ in module.named_parameters():
            if any(pname == p or pname.startswith(p + ".") for p in prefixes):
                continue
            target = first if (is_embedding_like(pname) and first != last) else last
            groups[names.index(target)][1].append(pname)
        built = blocks_from_prefixes(module, [(n, ps) for n, ps in groups if ps], last)
        return [Block(b.name, b.params, reaches_output=False) if b.name in self.unused else b for b in built]

    def layer_paths(self) -> dict[str, str]:
        """Block name -> module path of the layer whose output is that block's output."""
        if self.layers_path is None:
            return {}
        return {self.layer_block(i): f"{self.layers_path}.{i}" for i in range(self.n_layers)}


def first_tensor(output: Any) -> torch.Tensor:
    """A module's main output: the tensor itself, or the first element of a tuple or ModelOutput."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(iter(output.values()))
    if isinstance(output, Sequence) and output:
        return first_tensor(output[0])
    raise TypeError(f"cannot find a tensor in a {type(output).__name__} output")


@contextmanager
def capture_outputs(module: nn.Module, paths: dict[str, str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the main output of each named submodule during the forward passes run inside the block."""
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inputs: Any, output: Any) -> None:
            captured[name] = first_tensor(output)

        return hook

    try:
        for name, path in paths.items():
            handles.append(module.get_submodule(path).register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for h in handles:
            h.remove()
