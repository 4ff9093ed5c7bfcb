"""Processes that read beside the model leave what they inherited out of their garbage collections
(:func:`tlkit.data.workers.freeze_inherited`): checked in real DataLoader worker processes."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from tlkit.data.workers import freeze_inherited


class FreezeCount:
    """A dataset whose items are the number of frozen objects in the process that reads them."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        return gc.get_freeze_count()


@pytest.mark.parametrize("init", [None, freeze_inherited])
def test_a_worker_freezes_what_it_inherited(init: Any) -> None:
    from torch.utils.data import DataLoader

    assert gc.get_freeze_count() == 0  # this process never froze: a worker's frozen objects are its own doing
    counts = [int(x) for x in DataLoader(FreezeCount(), batch_size=None, num_workers=1, worker_init_fn=init)]  # type: ignore[arg-type]
    if init is None:
        assert counts == [0, 0]
    else:
        assert min(counts) > 10_000  # torch, tlkit and pytest, all inherited
