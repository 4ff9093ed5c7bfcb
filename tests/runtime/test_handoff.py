"""Batches cross from DataLoader workers whole: small tensors inline in the pipe, large ones in shared memory."""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import pytest
import torch

from tlkit.contract.pixels import PixelBatch
from tlkit.extraction.loader import Batch
from tlkit.runtime.handoff import INLINE_BYTES, InlineTensor, inline_small, restore_inline


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)
    order = sorted(range(a.dim()), key=lambda d: -a.stride(d))
    assert sorted(range(b.dim()), key=lambda d: -b.stride(d)) == order  # the same memory layout


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(4, 3, 5, 7),
        lambda: torch.randn(4, 3, 5, 7).contiguous(memory_format=torch.channels_last),
        lambda: torch.randint(0, 255, (6, 8, 8, 3), dtype=torch.uint8).permute(0, 3, 1, 2),  # NHWC memory
        lambda: torch.randn(5, 9).to(torch.bfloat16),
        lambda: torch.rand(7) > 0.5,
        lambda: torch.tensor(3.5),
        lambda: torch.zeros(0, 4),
        lambda: torch.arange(40, dtype=torch.int64).view(5, 8)[:, ::2],  # a strided view
        lambda: torch.randn(3, 1).expand(3, 4),  # stride 0
    ],
)
def test_inline_tensor_round_trip_keeps_values_dtype_and_layout(make: Any) -> None:
    t = make()
    back = pickle.loads(pickle.dumps(InlineTensor.of(t))).tensor()
    assert torch.equal(back, t) and back.dtype == t.dtype and back.shape == t.shape
    if t.dim() == 4:
        _same(t, back)


def test_small_tensors_inline_large_ones_stay_tensors() -> None:
    small, large = torch.ones(8, 8), torch.zeros(INLINE_BYTES // 4 + 1)
    pix = PixelBatch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.ones(3, 1, 1), torch.zeros(3, 1, 1))
    packed = inline_small({"a": small, "b": [large, (pix,)], "c": "text"})
    assert isinstance(packed["a"], InlineTensor) and packed["b"][0] is large and packed["c"] == "text"
    assert isinstance(packed["b"][1][0], PixelBatch) and isinstance(packed["b"][1][0].pixels, InlineTensor)
    restored = restore_inline(packed)
    assert torch.equal(restored["a"], small) and restored["b"][0] is large
    _same(restored["b"][1][0].pixels, pix.pixels)
    assert torch.equal(restored["b"][1][0].scale, pix.scale)


class _Batches:
    """A map-style dataset whose batches hold one small and one large tensor, as a collate function makes them."""

    def __len__(self) -> int:
        return 4

    def __getitems__(self, idx: list[int]) -> Batch:
        b = Batch(list(idx), [], Counter(), size=len(idx))
        b.inputs = {"small": torch.full((16, 16), float(idx[0])), "large": torch.full((INLINE_BYTES,), idx[0] % 7)}
        b.views = [torch.arange(10) + idx[0]]
        b.share_memory()
        return b


def test_batches_from_a_worker_arrive_whole() -> None:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _Batches(),  # type: ignore[arg-type]
        batch_sampler=[[0], [1], [2], [3]],
        num_workers=1,
        collate_fn=lambda b: b,
    )
    got = list(loader)
    assert [b.positions for b in got] == [[0], [1], [2], [3]]
    for i, b in enumerate(got):
        assert torch.equal(b.inputs["small"], torch.full((16, 16), float(i)))
        assert torch.equal(b.inputs["large"], torch.full((INLINE_BYTES,), i % 7))
        assert torch.equal(b.views[0], torch.arange(10) + i)
        assert not b.inputs["small"].is_shared()  # came through the pipe
        assert b.inputs["large"].is_shared()  # came through shared memory
