"""Batches on the device: nested tensor structures, moving them, splitting them, and the out-of-memory back-off.

With ``--batch-size auto`` (:attr:`tlkit.runtime.Runtime.auto_batch`) a forward pass that runs out of memory is
retried on halves of the same rows, so no batch is lost; the smaller sub-batch is kept for the batches that follow.
An explicit batch size never changes behind the user's back: out of memory is then an error naming the parameter.
The rule lives here so that every stage that runs a backbone over raw items (extraction, prediction) backs off the
same way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tlkit.errors import ConfigError, TlkitError

if TYPE_CHECKING:
    import torch

    from tlkit.runtime.resolution import Runtime

T = TypeVar("T")


def tree_map(fn: Callable[[Any], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in a batch (a tensor, or mappings, lists and tuples of them)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(tree_map(fn, v) for v in obj)
    return obj


def prefers_channels_last(module: Any, modality: str) -> bool:
    """Whether batches and weights go NHWC (``channels_last``): image networks with three or more 2-D convolutions,
    where oneDNN and cuDNN run convolutions faster in that layout (on the CPU too, in fp32 and bf16 alike)."""
    from torch import nn

    return modality == "image" and sum(isinstance(m, nn.Conv2d) for m in module.modules()) >= 3


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``batch`` on ``device`` (asynchronous copies from pinned memory); 4-D tensors in ``channels_last`` if asked.
    A :class:`tlkit.contract.pixels.PixelBatch` travels as ``uint8`` and is normalised there."""
    import torch

    from tlkit.contract.pixels import PixelBatch

    if isinstance(batch, PixelBatch):
        return batch.to(device, channels_last)

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    return tree_map(move, batch)


def slice_batch(obj: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of every tensor in a batch."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj[a:b]
    if isinstance(obj, Mapping):
        return {k: slice_batch(v, a, b) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(slice_batch(v, a, b) for v in obj)
    raise TlkitError(
        f"cannot split a batch of type {type(obj).__name__} after out-of-memory; set {{param}} to a size that fits",
        param="batch_size",
    )


#: What torch's allocators say when an allocation fails: CUDA and MPS ("out of memory"), the CPU allocator
#: (c10/core/impl/alloc_cpu.cpp: "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error
#: code 12 (Cannot allocate memory)"), tensor metadata ("Could not allocate memory for Tensor SizesAndStrides") and a
#: C++ ``std::bad_alloc`` passed through as a RuntimeError.
OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "could not allocate memory",
    "std::bad_alloc",
    "failed to allocate memory",
)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` reports that a device ran out of memory (CUDA, MPS or the CPU allocator).

    A Python :class:`MemoryError` (NumPy's ``Unable to allocate`` among them) counts too: on the CPU the batch's
    host arrays compete for the same memory as the forward pass.
    """
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in OOM_MESSAGES)


def oom_error(exc: BaseException, batch_size: int, device: object) -> ConfigError:
    """The one-line error for an out-of-memory that cannot be retried smaller (a fixed batch size, or one row)."""
    if batch_size <= 1:
        fix = "free memory (other processes, a smaller model or input size) and rerun"
        return ConfigError(f"out of memory on {device} even at {{param}} 1; {fix}", param="batch_size")
    return ConfigError(
        f"out of memory at batch size {batch_size} on {device}; lower {{param}} or set it to auto", param="batch_size"
    )


def shared_memory_error(exc: BaseException) -> ConfigError | None:
    """The one-line error for a DataLoader worker that could not hand a batch over through shared memory (torch
    writes it to a ``/dev/shm`` file: ``unable to write to file </torch_...>``, ``unable to resize file``), which
    a file-size limit (``ulimit -f``) or a full ``/dev/shm`` causes; ``None`` for any other error."""
    text = str(exc)
    killed = "killed by signal: File size limit exceeded" in text  # a worker that did not ignore SIGXFSZ
    if not isinstance(exc, RuntimeError) or not ("</torch_" in text or killed):
        return None
    detail = next((line for line in text.splitlines() if "</torch_" in line), text.splitlines()[0]).strip()
    if killed or "File too large" in text or "(27)" in text:
        why = "a file-size limit (ulimit -f) was reached"
    elif "No space left" in text or "(28)" in text:
        why = "/dev/shm is full"
    else:
        why = "shared memory could not be written"
    return ConfigError(
        f"DataLoader worker processes pass batches through shared memory in /dev/shm, and {why} ({detail}); "
        "raise the limit or free /dev/shm, or set {param} 0 to decode in the main process, then rerun the same "
        "command (finished work is kept)",
        param="workers",
    )


def resource_error(exc: BaseException) -> ConfigError | None:
    """A one-line error for running out of a resource outside the back-off (memory while decoding, collating or
    writing; shared memory between DataLoader workers), or ``None``: what the CLI shows instead of a traceback."""
    shared = shared_memory_error(exc)
    if shared is not None or not isinstance(exc, RuntimeError | MemoryError):
        return shared
    if "torch" in sys.modules and is_oom(exc) or isinstance(exc, MemoryError):
        detail = (str(exc).splitlines() or [type(exc).__name__])[0].strip() or type(exc).__name__
        return ConfigError(
            f"out of memory ({detail}); lower {{param}} (or the number of workers), or free memory, and rerun",
            param="batch_size",
        )
    return None


def release_cached_memory(device: torch.device) -> None:
    """Hand the allocator's cached blocks back after an out-of-memory error, so the smaller retry can use them."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class Backoff(Generic[T]):
    """Runs a forward pass over ``n`` rows, halving the sub-batch on out-of-memory when the runtime allows it.

    ``forward(a, b)`` computes rows ``a:b``; ``join(parts)`` concatenates the results of consecutive sub-batches.
    The sub-batch reached after a back-off is kept for later calls, so one oversized batch costs one retry.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.enabled = runtime.auto_batch
        self.device = runtime.device
        self.step: int | None = None  # the sub-batch size after a back-off

    def run(self, n: int, forward: Callable[[int, int], T], join: Callable[[Sequence[T]], T]) -> T:
        step = self.step or n
        while True:
            try:
                if step >= n:
                    return forward(0, n)
                return join([forward(a, min(a + step, n)) for a in range(0, n, step)])
            except Exception as exc:
                if not is_oom(exc):
                    raise
                if not self.enabled or step <= 1:
                    raise oom_error(exc, step if n > 1 else 1, self.device) from exc
                step = max(1, min(step, n) // 2)
                self.step = step
                release_cached_memory(self.device)


__all__ = [
    "Backoff",
    "is_oom",
    "oom_error",
    "prefers_channels_last",
    "release_cached_memory",
    "resource_error",
    "shared_memory_error",
    "slice_batch",
    "to_device",
    "tree_map",
]
