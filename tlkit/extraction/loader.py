"""The input side of extraction: a DataLoader whose worker processes decode (the reader), preprocess (the
backbone's eval transform, plus K training transforms for ``views``) and collate, in windows of planned positions.

Text and audio are length-bucketed inside a window (similar lengths share a batch, so little padding is computed);
the writer puts the rows back in dataset order before the window is committed.

Large JPEGs are decoded at a reduced size when the backbone says how large its transform resizes to
(``ImageBackbone.decode_size()``, :func:`tlkit.data.image.reduced_decoding`), unless ``decode="exact"`` or views are
computed (training transforms crop at random and need every pixel). With ``--workers auto`` the first batches are
prepared in this process and timed against the forward pass, and the worker count is chosen from that
(:func:`tlkit.runtime.resolution.measured_workers`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.contract.backbone import Backbone
from tlkit.contract.image import ImageBackbone
from tlkit.data.base import Reader, Record, load_or_skip
from tlkit.data.image import reduced_decoding
from tlkit.errors import ConfigError
from tlkit.runtime.batching import shared_memory_error, tree_map
from tlkit.runtime.resolution import measured_workers

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

    def __init__(
        self, records: Sequence[Record], reader: Reader, backbone: Backbone, views: int, seed: int,
        decode: str = "reduced",
    ) -> None:  # fmt: skip
        self.records, self.reader, self.backbone, self.views, self.seed = records, reader, backbone, views, seed
        self.decode = check_decode(decode)
        self._side: list[int | None] = []  # the backbone's decode size, asked once per process

    def __len__(self) -> int:
        return len(self.records)

    def decode_side(self) -> int | None:
        """The side large JPEGs may be decoded down to (``None``: full size): the backbone's, for the evaluation
        transform alone; training views crop at random and read the full image."""
        if not self._side:
            side = None
            if self.decode == "reduced" and not self.views and isinstance(self.backbone, ImageBackbone):
                try:
                    side = self.backbone.decode_size()
                except Exception:  # noqa: BLE001 - a transform that cannot be built fails per item, with its reason
                    side = None
            self._side.append(side)
        return self._side[0]

    def __getitem__(self, pos: int) -> Loaded:
        rec = self.records[pos]
        with reduced_decoding(self.decode_side()):
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


#: How extraction decodes images: ``reduced`` decodes large JPEGs at a reduced size for the backbone's resize
#: (``ImageBackbone.decode_size()``), ``exact`` decodes every image at full size.
DECODE_MODES = ("reduced", "exact")

#: With ``--workers auto``, batches prepared in the main process before the worker count is chosen: the first warms
#: up (imports, first forward pass), the others are timed.
PROBE_BATCHES = 3


def check_decode(decode: str) -> str:
    """``decode`` checked against :data:`DECODE_MODES` (a :class:`ConfigError` about the parameter ``decode``)."""
    if decode not in DECODE_MODES:
        raise ConfigError(f"{{param}} must be one of {', '.join(DECODE_MODES)}, not {decode!r}", param="decode")
    return decode


class Loader:
    """The batches of one pass over planned positions (iterate once). ``workers`` is the number of DataLoader
    worker processes that prepare them: the runtime's, or with ``--workers auto`` the measured choice (known once
    the probe batches have been consumed)."""

    def __init__(
        self, source: ItemSource, collate: Collate, plan: BatchPlan, runtime: Runtime, probe: int = PROBE_BATCHES
    ) -> None:
        self.source, self.collate, self.plan, self.runtime = source, collate, plan, runtime
        self.probe = probe if runtime.auto_workers and runtime.workers > 0 else 0
        self.workers = runtime.workers
        self.timings: list[tuple[float, float]] = []  # (prepare s, step s) of the timed probe batches

    def __iter__(self) -> Iterator[Batch]:
        return _shared_memory_checked(self._batches())

    def _batches(self) -> Iterator[Batch]:
        plan = iter(self.plan)
        for i in range(self.probe):
            idx = next(plan, None)
            if idx is None:
                self.workers = 0  # everything was prepared here
                return
            with _one_thread():  # as in a worker process
                t0 = time.perf_counter()
                b = self.collate([self.source[p] for p in idx])
                t1 = time.perf_counter()
            if self.runtime.pin_memory:
                b = b.pin_memory()
            t2 = time.perf_counter()
            yield b
            self._sync()  # the step ends when the device has finished it, not when it was queued
            if i:  # the first batch warms up
                self.timings.append((t1 - t0, time.perf_counter() - t2))
        if self.probe:
            following = next(plan, None)
            if following is None:  # the probe prepared everything: no worker process to start for nothing
                self.workers = 0
                return
            plan = itertools.chain([following], plan)
            prepare = statistics.median(t for t, _ in self.timings) if self.timings else 0.0
            step = statistics.median(s for _, s in self.timings) if self.timings else 0.0
            self.workers = measured_workers(self.runtime, prepare, step) if self.timings else self.runtime.workers
        yield from self._data_loader(plan, self.workers)

    def _sync(self) -> None:
        if self.runtime.device_type == "cuda":
            import torch

            torch.cuda.synchronize(self.runtime.device)

    def _data_loader(self, plan: Iterable[list[int]], workers: int) -> Iterable[Batch]:
        from torch.utils.data import DataLoader

        loader: Iterable[Batch] = DataLoader(
            self.source,  # type: ignore[arg-type]
            batch_sampler=plan,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=self.runtime.pin_memory,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )
        return loader


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
    decode: str = "reduced",
) -> Loader:
    """The batches over ``records``: windows of ``window`` positions in batches of ``batch``, with the runtime's
    workers (measured, for ``--workers auto``) and pinned memory. ``decode`` is one of :data:`DECODE_MODES`. A
    worker that cannot pass a batch through shared memory (a file-size limit, a full ``/dev/shm``) is a one-line
    :class:`tlkit.errors.ConfigError`, not a worker traceback."""
    source = ItemSource(records, reader, backbone, views, seed, decode)
    plan = BatchPlan(len(records), window, batch, length_fn(records, reader, backbone))
    return Loader(source, Collate(backbone, views), plan, runtime)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread, as in DataLoader workers (which torch starts with one)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _shared_memory_checked(loader: Iterable[Batch]) -> Iterator[Batch]:
    try:
        yield from loader
    except RuntimeError as exc:
        error = shared_memory_error(exc)
        if error is None:
            raise
        raise error from None


__all__ = [
    "DECODE_MODES",
    "PROBE_BATCHES",
    "Batch",
    "BatchPlan",
    "ItemSource",
    "Loaded",
    "Loader",
    "check_decode",
    "length_fn",
    "make_loader",
    "view_seed",
]
