"""The input side of extraction: a DataLoader whose worker processes decode (the reader), preprocess (the
backbone's eval transform, plus K training transforms for ``views``) and collate, in windows of planned positions.

Text and audio are length-bucketed inside a window (similar lengths share a batch, so little padding is computed);
the writer puts the rows back in dataset order before the window is committed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.contract.backbone import Backbone
from tlkit.data.base import Reader, Record, load_or_skip
from tlkit.runtime.batching import shared_memory_error, tree_map

if TYPE_CHECKING:
    from tlkit.runtime.resolution import Runtime


def view_seed(item_id: str, k: int, base: int = 0) -> int:
    """A per-item, per-view seed: views are reproducible and independent of batching, workers and resumes."""
    digest = hashlib.sha256(f"{base}\0{item_id}\0{k}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class Loaded:
    """One item after decoding and preprocessing in a worker, or the reason it could not be."""

    pos: int
    x: Any
    reason: str | None
    flags: tuple[str, ...] = ()
    views: list[Any] = field(default_factory=list)


class ItemSource:
    """``torch.utils.data.Dataset`` over planned positions: decode, preprocess, augment. Runs in workers."""

    def __init__(self, records: Sequence[Record], reader: Reader, backbone: Backbone, views: int, seed: int) -> None:
        self.records, self.reader, self.backbone, self.views, self.seed = records, reader, backbone, views, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, pos: int) -> Loaded:
        rec = self.records[pos]
        item, reason = load_or_skip(self.reader, rec)
        if reason is not None:
            return Loaded(pos, None, reason)
        try:
            x = self.backbone.preprocess_item(item, train=False)
            flags = tuple(self.backbone.item_flags(x))
            views = [self._view(item, rec.id, k) for k in range(self.views)]
        except Exception as exc:  # a preprocessing failure is a bad item too, with its reason
            return Loaded(pos, None, f"preprocessing failed ({type(exc).__name__}: {exc})")
        return Loaded(pos, x, None, flags, views)

    def _view(self, item: Any, item_id: str, k: int) -> Any:
        import numpy as np
        import torch

        s = view_seed(item_id, k, self.seed)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % (2**32))
            try:
                return self.backbone.preprocess_item(item, train=True)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


@dataclass
class Batch:
    """A collated batch: the good items' inputs (and views) with their positions, and the bad items' reasons."""

    positions: list[int]  # positions of good items, in batch order
    bad: list[tuple[int, str]]
    flags: Counter[str]
    inputs: Any = None
    views: list[Any] = field(default_factory=list)
    size: int = 0  # good + bad

    def pin_memory(self) -> Batch:
        self.inputs = tree_map(lambda t: t.pin_memory(), self.inputs)
        self.views = [tree_map(lambda t: t.pin_memory(), v) for v in self.views]
        return self


class Collate:
    def __init__(self, backbone: Backbone, views: int) -> None:
        self.backbone, self.views = backbone, views

    def __call__(self, loaded: list[Loaded]) -> Batch:
        good = [x for x in loaded if x.reason is None]
        flags: Counter[str] = Counter()
        for x in good:
            flags.update(x.flags)
        out = Batch(
            [x.pos for x in good], [(x.pos, str(x.reason)) for x in loaded if x.reason], flags, size=len(loaded)
        )
        if good:
            out.inputs = self.backbone.collate([x.x for x in good])
            out.views = [self.backbone.collate([x.views[k] for x in good]) for k in range(self.views)]
        return out


class BatchPlan:
    """The batch sampler: windows of ``window`` planned positions, each cut into batches (length-sorted when the
    backbone buckets by length). Lazy, so lengths are only computed as the loader reaches a window."""

    def __init__(self, n: int, window: int, batch: int, length: Callable[[int], int | None] | None) -> None:
        self.n, self.window, self.batch, self.length = n, window, batch, length

    def __iter__(self) -> Iterator[list[int]]:
        for w0 in range(0, self.n, self.window):
            positions = list(range(w0, min(w0 + self.window, self.n)))
            if self.length is not None:
                keys = [self.length(p) for p in positions]
                if all(k is not None for k in keys):
                    positions = [p for _, p in sorted(zip(keys, positions, strict=True))]
            for a in range(0, len(positions), self.batch):
                yield positions[a : a + self.batch]

    def __len__(self) -> int:
        return sum(math.ceil(min(self.window, self.n - w0) / self.batch) for w0 in range(0, self.n, self.window))


def length_fn(records: Sequence[Record], reader: Reader, backbone: Backbone) -> Callable[[int], int | None] | None:
    """Lengths for bucketing: the reader's cheap ``Record.length``; for text, the backbone's ``sort_key`` on the
    decoded string (text decodes cheaply); ``None`` for fixed-size inputs."""
    if backbone.modality == "image":
        return None

    def length(pos: int) -> int | None:
        rec = records[pos]
        if rec.length is not None:
            return int(rec.length)
        if backbone.modality != "text":
            return None
        item, reason = load_or_skip(reader, rec)
        if reason is not None:
            return 0
        try:
            key = backbone.sort_key(item)
        except Exception:  # noqa: BLE001 - bucketing is an optimisation only
            return 0
        return None if key is None else int(key)

    return length


def make_loader(
    records: Sequence[Record],
    reader: Reader,
    backbone: Backbone,
    runtime: Runtime,
    *,
    batch: int,
    window: int,
    views: int = 0,
    seed: int = 0,
) -> Iterator[Batch]:
    """The DataLoader over ``records``: windows of ``window`` positions in batches of ``batch``, with the
    runtime's workers and pinned memory. A worker that cannot pass a batch through shared memory (a file-size limit,
    a full ``/dev/shm``) is a one-line :class:`tlkit.errors.ConfigError`, not a worker traceback."""
    from torch.utils.data import DataLoader

    loader: Iterable[Batch] = DataLoader(
        ItemSource(records, reader, backbone, views, seed),  # type: ignore[arg-type]
        batch_sampler=BatchPlan(len(records), window, batch, length_fn(records, reader, backbone)),
        num_workers=runtime.workers,
        collate_fn=Collate(backbone, views),
        pin_memory=runtime.pin_memory,
        prefetch_factor=2 if runtime.workers else None,
        persistent_workers=False,
    )
    return _shared_memory_checked(loader)


def _shared_memory_checked(loader: Iterable[Batch]) -> Iterator[Batch]:
    try:
        yield from loader
    except RuntimeError as exc:
        error = shared_memory_error(exc)
        if error is None:
            raise
        raise error from None


__all__ = ["Batch", "BatchPlan", "ItemSource", "Loaded", "length_fn", "make_loader", "view_seed"]
