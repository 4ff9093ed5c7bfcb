"""An exponential moving average of the weights (``--ema``): what is validated, kept and saved when it is on.

The averaged copy follows every optimizer step, ``avg ← d·avg + (1 − d)·w``, with the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``: ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` steps, so early on
the average spans about the last tenth of the steps taken and the starting weights do not dominate it. Only the
parameters some phase trains are averaged (the others never change). Buffers (BatchNorm statistics) are the
live model's, as timm's ``ModelEmaV3`` does with ``exclude_buffers``: they are already running averages, and under
DDP rank 0's are broadcast every epoch. Each validation, the best model and the final model use the averaged weights
(:meth:`WeightAverage.applied`); training continues from the live ones. The checkpoint keeps both, so ``--resume``
continues the same average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from tlkit.errors import BadInputError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The checkpoint's key prefix for the averaged parameters.
PREFIX = "ema."
#: The warm-up: the decay after n steps is at most (1 + n) / (WARMUP + n).
WARMUP = 10


class WeightAverage:
    """The exponential moving average of ``model``'s parameters, with per-step ``decay`` in (0, 1): of those in
    ``only`` when given (those some phase trains: the others never change, so they need no copy)."""

    def __init__(self, model: nn.Module, decay: float, only: Iterable[torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.updates = 0
        keep = None if only is None else {id(p) for p in only}
        named = [(n, p) for n, p in model.named_parameters() if keep is None or id(p) in keep]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (WARMUP + self.updates))

    def update(self) -> None:
        """Move the average towards the live weights after an optimizer step."""
        import torch

        self.updates += 1
        weight = 1.0 - self.current_decay()
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its live weights again after it."""
        import torch

        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            _copy(self.params, self.shadow)
        try:
            yield
        finally:
            _copy(self.params, live)

    def load_live(self) -> None:
        """Make the averaged weights the model's own (the end of a run without validation)."""
        _copy(self.params, self.shadow)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged parameters, keyed for a checkpoint."""
        return {PREFIX + name: t for name, t in zip(self.names, self.shadow, strict=True)}

    def restore(self, tensors: dict[str, torch.Tensor], updates: int, source: str, fix: str = "") -> None:
        """Load what :meth:`tensors` saved (all of it, shapes checked) and the number of steps averaged; a
        mismatch is a :class:`BadInputError` naming ``source`` and ending with ``fix``."""
        import torch

        missing = [name for name in self.names if PREFIX + name not in tensors]
        if missing:
            raise BadInputError(f"{source}: the checkpoint holds no weight average for {missing[0]!r}{fix}")
        with torch.no_grad():
            for name, shadow in zip(self.names, self.shadow, strict=True):
                saved = tensors[PREFIX + name]
                if saved.shape != shadow.shape:
                    raise BadInputError(
                        f"{source}: the checkpoint's weight average of {name!r} has shape {tuple(saved.shape)}, "
                        f"the model's {tuple(shadow.shape)}{fix}"
                    )
                shadow.copy_(saved)
        self.updates = updates


def _copy(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    import torch

    with torch.no_grad():
        for target, source in zip(targets, sources, strict=True):
            target.copy_(source)


__all__ = ["PREFIX", "WeightAverage"]
