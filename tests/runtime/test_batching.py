"""The out-of-memory back-off and the batch helpers every stage that runs a backbone over raw items shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from tlkit.errors import ConfigError, TlkitError
from tlkit.runtime import Runtime, RuntimeOptions, resolve
from tlkit.runtime.batching import Backoff, is_oom, slice_batch, to_device, tree_map


def _runtime(batch_size: int | str) -> Runtime:
    return resolve("extract", RuntimeOptions(device="cpu", precision="fp32", batch_size=batch_size), env=None)


def _forward_fitting(limit: int, calls: list[tuple[int, int]]) -> Callable[[int, int], list[int]]:
    """A forward pass that runs out of memory on more than ``limit`` rows, logging the rows it was asked for."""

    def forward(a: int, b: int) -> list[int]:
        calls.append((a, b))
        if b - a > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(range(a, b))

    return forward


def _join(parts: Sequence[list[int]]) -> list[int]:
    return [x for p in parts for x in p]


def test_auto_batch_halves_on_oom_keeps_every_row_and_remembers_the_step() -> None:
    backoff: Backoff[list[int]] = Backoff(_runtime("auto"))
    calls: list[tuple[int, int]] = []
    assert backoff.run(10, _forward_fitting(3, calls), _join) == list(range(10))
    assert calls[0] == (0, 10) and backoff.step == 2  # 10 -> 5 (too big) -> 2
    calls.clear()
    assert backoff.run(4, _forward_fitting(3, calls), _join) == [0, 1, 2, 3]
    assert calls == [(0, 2), (2, 4)]  # the next batch starts at the step reached, without a failed try


def test_an_explicit_batch_size_is_never_changed() -> None:
    backoff: Backoff[list[int]] = Backoff(_runtime(8))
    with pytest.raises(ConfigError, match="out of memory at batch size 8 on cpu; lower batch_size") as info:
        backoff.run(8, _forward_fitting(3, []), _join)
    assert info.value.param == "batch_size" and "--batch-size" in info.value.for_flag("--batch-size")


def test_other_errors_pass_through() -> None:
    backoff: Backoff[list[int]] = Backoff(_runtime("auto"))

    def broken(a: int, b: int) -> list[int]:
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        backoff.run(4, broken, _join)
    assert is_oom(RuntimeError("MPS backend out of memory")) and not is_oom(ValueError("out of memory"))


def test_batches_are_split_and_moved_as_trees() -> None:
    batch = {"ids": torch.arange(6), "pair": (torch.ones(6, 2), [torch.zeros(6)])}
    part = slice_batch(batch, 2, 5)
    assert part["ids"].tolist() == [2, 3, 4] and part["pair"][0].shape == (3, 2) and part["pair"][1][0].shape == (3,)
    assert isinstance(part["pair"], tuple) and isinstance(part["pair"][1], list)
    assert tree_map(lambda t: t.sum(), {"a": torch.ones(3)})["a"] == 3
    moved = to_device(torch.ones(2, 3, 4, 4), torch.device("cpu"), channels_last=True)
    assert moved.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(TlkitError, match="cannot split a batch of type str"):
        slice_batch("text", 0, 1)
