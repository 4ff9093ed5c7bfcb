"""How a batch crosses from a DataLoader worker process to the process that runs the model.

PyTorch hands every tensor over through shared memory: the worker moves its storage into a ``/dev/shm`` file, and
the file descriptor is passed to the main process over a socket, one connection per storage, which then maps it.
That is the right way for large tensors (no copy of the data), but it costs about the same for a tensor of a few
kilobytes (a batch of 256 8x8 images is 192 KiB as ``float32``). Tensors up to :data:`INLINE_BYTES` therefore travel
inside the pickled batch, through the worker's pipe, as their bytes (:class:`InlineTensor`), and come back as
tensors with the same dtype, shape and memory layout; larger ones still go through shared memory.
``benchmarks/batch_handoff.py`` measures both ways: the pipe was 2.3x faster per batch at 16 KiB and 1.3x at
256 KiB, shared memory faster from 512 KiB (docs/benchmarks.md, issue 18).

Containers are walked as :func:`tlkit.runtime.batching.tree_map` walks them (mappings, lists, tuples), and
dataclass instances field by field (a :class:`tlkit.contract.pixels.PixelBatch`, an ``EncodedBatch``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Tensors of at most this many bytes cross from a worker inside the pickled batch; larger ones through shared
#: memory. Measured (``benchmarks/batch_handoff.py``, docs/benchmarks.md, 2 workers): inline is 2.3x faster at
#: 16 KiB and 1.3x at 256 KiB, shared memory 1.1x faster at 512 KiB and 2x at 1 MiB.
INLINE_BYTES = 256 << 10


@dataclass(frozen=True)
class InlineTensor:
    """A tensor as its bytes, in its own memory order: ``data`` holds the tensor permuted by ``order`` (its
    dimensions from the largest stride to the smallest), made contiguous, viewed as ``uint8``."""

    data: np.ndarray
    dtype: torch.dtype
    shape: tuple[int, ...]  # of the permuted, contiguous tensor
    order: tuple[int, ...]

    @classmethod
    def of(cls, t: torch.Tensor) -> InlineTensor:
        """``t`` (on the CPU) as bytes; a channels-last or otherwise permuted tensor keeps its layout."""
        import torch

        strides = t.stride()
        order = tuple(sorted(range(t.dim()), key=lambda d: -strides[d]))  # stable: ties keep their order
        dense = t.detach().permute(order).contiguous()
        raw = dense.reshape(-1).view(torch.uint8) if dense.dim() else dense.reshape(1).view(torch.uint8)
        return cls(raw.numpy(), dense.dtype, tuple(dense.shape), order)

    def tensor(self) -> torch.Tensor:
        """The tensor again: same values, dtype, shape and strides' order (its memory is this object's array)."""
        import torch

        dense = torch.from_numpy(self.data).view(self.dtype).view(self.shape)
        inverse = tuple(sorted(range(len(self.order)), key=lambda i: self.order[i]))
        return dense.permute(inverse)


def walk(obj: Any, fn: Callable[[Any], Any], leaf: type | tuple[type, ...]) -> Any:
    """``obj`` with ``fn`` applied to every ``leaf`` inside it: through mappings, lists, tuples and dataclass
    instances (rebuilt with :func:`dataclasses.replace`)."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: walk(v, fn, leaf) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(walk(v, fn, leaf) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: walk(getattr(obj, f.name), fn, leaf) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def share_large(obj: Any) -> None:
    """Move the tensors in ``obj`` larger than :data:`INLINE_BYTES` into shared memory, in place (in the worker,
    so that a failure, a full ``/dev/shm`` or a file-size limit, is raised there and reaches the main process as an
    error)."""
    import torch

    def share(t: torch.Tensor) -> torch.Tensor:
        if t.nbytes > INLINE_BYTES:
            t.share_memory_()  # type: ignore[no-untyped-call]
        return t

    walk(obj, share, torch.Tensor)


def inline_small(obj: Any) -> Any:
    """``obj`` with each CPU tensor of at most :data:`INLINE_BYTES` replaced by its :class:`InlineTensor`."""
    import torch

    def pack(t: torch.Tensor) -> Any:
        return InlineTensor.of(t) if t.device.type == "cpu" and t.nbytes <= INLINE_BYTES else t

    return walk(obj, pack, torch.Tensor)


def restore_inline(obj: Any) -> Any:
    """``obj`` with each :class:`InlineTensor` turned back into its tensor."""
    return walk(obj, lambda x: x.tensor(), InlineTensor)


def tensor_bytes(obj: Any) -> int:
    """The bytes of all tensors in ``obj`` (walked as :func:`walk` walks it)."""
    import torch

    total = [0]

    def count(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.nbytes
        return t

    walk(obj, count, torch.Tensor)
    return total[0]


__all__ = ["INLINE_BYTES", "InlineTensor", "inline_small", "restore_inline", "share_large", "tensor_bytes", "walk"]
