"""The input side of extraction: a DataLoader whose worker processes decode (the reader), preprocess (the
backbone's eval transform, plus K training transforms for ``views``) and collate, in windows of planned positions.

Text and audio are length-bucketed inside a window (similar lengths share a batch, so little padding is computed);
the writer puts the rows back in dataset order before the window is committed.

Large JPEGs are decoded at a reduced size when the backbone says how large its transform resizes to
(``ImageBackbone.decode_size()``, :func:`tlkit.data.image.reduced_decoding`), unless ``decode="exact"`` or views are
computed (training transforms crop at random and need every pixel).

Images whose evaluation transform is a standard pipeline (``ImageBackbone.pixel_pipeline()``) take the pixel path,
as timm's prefetching loader does: JPEGs are decoded straight into ``uint8`` tensors
(:func:`tlkit.data.image.pixel_decoding`), resized and cropped as ``uint8``, collated into one NHWC ``uint8`` buffer
(:class:`tlkit.contract.pixels.PixelBatch`), and normalised once per batch where the model runs. With
``decode="device"``, baseline JPEGs skip the workers' decoding: they travel compressed
(:class:`tlkit.contract.pixels.EncodedBatch`) and this process decodes them on the runtime's device in one call per
batch (nvJPEG on a CUDA GPU), before the batch reaches the model.

Who prepares the batches: on the CPU, with ``--workers auto`` and the pixel path, this process does, with one
thread per core between two forward passes (decoding and resizing release the GIL): the forward pass then has every
core to itself, instead of sharing them with worker processes whose preemption stalls its OpenMP threads. Otherwise,
with ``--workers auto``, the first batches are prepared in this process and timed against the forward pass, and the
worker count is chosen from that (:func:`tlkit.runtime.resolution.measured_workers`); when it is 0, pixel batches
are still prepared on one thread per core. Worker processes leave the objects they inherit out of their garbage
collections (:func:`tlkit.data.workers.freeze_inherited`) and, when the probe's batches are small, prepare more of
them ahead (:func:`tlkit.runtime.workers.prefetch_depth`).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.contract.backbone import Backbone
from tlkit.contract.image import ImageBackbone
from tlkit.contract.pixels import EncodedBatch, PixelBatch, Uint8Pipeline
from tlkit.data.base import Reader, Record, load_or_skip
from tlkit.data.image import EncodedImage, as_rgb_image, encoded_jpegs, pixel_decoding, reduced_decoding
from tlkit.data.records import records_at
from tlkit.data.workers import freeze_inherited
from tlkit.errors import ConfigError
from tlkit.runtime.batching import shared_memory_error, tree_map
from tlkit.runtime.handoff import inline_small, restore_inline, share_large, tensor_bytes
from tlkit.runtime.resolution import measured_workers
from tlkit.runtime.workers import prefetch_depth

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
        self.pixels: Uint8Pipeline | None = None  # the pixel path (items are uint8 crops), when it applies
        if not views and isinstance(backbone, ImageBackbone):
            try:
                self.pixels = backbone.pixel_pipeline()
            except Exception:  # noqa: BLE001 - a transform that cannot be built fails per item, with its reason
                self.pixels = None
        self._pixel_reader = reader.returns_decoded_images

    def __len__(self) -> int:
        return len(self.records)

    def decode_side(self) -> int | None:
        """The side large JPEGs may be decoded down to (``None``: full size): the backbone's, for the evaluation
        transform alone; training views crop at random and read the full image."""
        if not self._side:
            side = None
            if self.decode in ("reduced", "device") and not self.views and isinstance(self.backbone, ImageBackbone):
                try:
                    side = self.backbone.decode_size()
                except Exception:  # noqa: BLE001 - a transform that cannot be built fails per item, with its reason
                    side = None
            self._side.append(side)
        return self._side[0]

    @property
    def encoded(self) -> bool:
        """Whether JPEGs travel compressed, to be decoded where the model runs (``decode="device"``, pixel path)."""
        return self.decode == "device" and self.pixels is not None and self._pixel_reader

    @contextlib.contextmanager
    def _decoding(self) -> Iterator[None]:
        """How :func:`tlkit.data.image.decode_image` decodes for this source: reduced size, pixels, encoded."""
        pixels = self.pixels is not None and self._pixel_reader
        with reduced_decoding(self.decode_side()), pixel_decoding(pixels), encoded_jpegs(self.encoded):
            yield

    def __getitem__(self, pos: int) -> Loaded:
        rec = self.records[pos]
        with self._decoding():
            item, reason = load_or_skip(self.reader, rec)
        return self._prepared(pos, rec, item, reason)

    def __getitems__(self, positions: Sequence[int]) -> list[Loaded]:
        """A batch, as the DataLoader asks for it: items are decoded a group at a time, then preprocessed, rather
        than decoding and preprocessing in turn (the decoder's and torch's code stay hot in the CPU's caches: a
        third less time per small item). A group ends at :data:`GROUP_BYTES` of decoded items, so large images are
        not all held at once."""
        out: list[Loaded] = []
        group: list[tuple[int, Record, Any, str | None]] = []
        held = 0
        records = records_at(self.records, positions)  # the batch's records at once: a table builds them by column
        with self._decoding():  # entered once per batch: about 7 us per item otherwise, more than a small item's read
            for i, (pos, rec) in enumerate(zip(positions, records, strict=True)):
                item, reason = load_or_skip(self.reader, rec)
                group.append((pos, rec, item, reason))
                held += _decoded_bytes(item)
                if held >= GROUP_BYTES or i == len(positions) - 1:
                    out += [self._prepared(*g) for g in group]
                    group, held = [], 0
        return out

    def _prepared(self, pos: int, rec: Record, item: Any, reason: str | None) -> Loaded:
        """A decoded item preprocessed (with its views), or the reason it is bad."""
        if reason is not None:
            return Loaded(pos, None, reason)
        try:
            if isinstance(item, EncodedImage):
                return Loaded(pos, item, None)  # decoded, resized and cropped where the model runs
            if self.pixels is not None:
                x = self.pixels.pixels(item if _is_tensor(item) else as_rgb_image(item))
                return Loaded(pos, x, None, tuple(self.backbone.item_flags(x)))
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

    def share_memory(self) -> None:
        """Move the large tensors into shared memory, in the worker that made them. Handing the batch over does the
        same move (torch writes it to a ``/dev/shm`` file); done here, a failure (a file-size limit, a full
        ``/dev/shm``) raises in the worker's fetch and reaches the main process as an error, where in the queue's
        feeder thread it is only printed and the main process waits for the batch forever. Small tensors travel
        inside the pickled batch instead (:mod:`tlkit.runtime.handoff`)."""
        share_large(self.inputs)
        share_large(self.views)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled to cross from a worker: small tensors as their bytes (:func:`tlkit.runtime.handoff.inline_small`),
        which costs less than passing a shared-memory file per tensor."""
        state = dict(self.__dict__)
        state["inputs"], state["views"] = inline_small(self.inputs), inline_small(self.views)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["inputs"], state["views"] = restore_inline(state["inputs"]), restore_inline(state["views"])
        self.__dict__.update(state)

    def pin_memory(self) -> Batch:
        if isinstance(self.inputs, PixelBatch | EncodedBatch):
            self.inputs = self.inputs.pin_memory()
        self.inputs = tree_map(lambda t: t.pin_memory(), self.inputs)
        self.views = [tree_map(lambda t: t.pin_memory(), v) for v in self.views]
        return self


class Collate:
    """Good items into one batch (the backbone's ``collate``, or a :class:`PixelBatch` on the pixel path)."""

    def __init__(self, backbone: Backbone, views: int, pixels: Uint8Pipeline | None = None) -> None:
        self.backbone, self.views, self.pixels = backbone, views, pixels

    def __call__(self, loaded: list[Loaded]) -> Batch:
        good = [x for x in loaded if x.reason is None]
        flags: Counter[str] = Counter()
        for x in good:
            flags.update(x.flags)
        out = Batch(
            [x.pos for x in good], [(x.pos, str(x.reason)) for x in loaded if x.reason], flags, size=len(loaded)
        )
        if good and self.pixels is not None:
            out.inputs = self.pixels.batch([x.x for x in good])
        elif good:
            out.inputs = self.backbone.collate([x.x for x in good])
            out.views = [self.backbone.collate([x.views[k] for x in good]) for k in range(self.views)]
        if good and _in_worker():
            out.share_memory()
        return out


def _in_worker() -> bool:
    """Whether this runs in a DataLoader worker process."""
    import torch.utils.data

    return torch.utils.data.get_worker_info() is not None


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


#: Bytes of decoded items :meth:`ItemSource.__getitems__` holds before preprocessing them.
GROUP_BYTES = 32 << 20


def _decoded_bytes(item: Any) -> int:
    """About how many bytes a decoded item holds (a PIL image, a tensor or array, an audio clip; text: its length)."""
    if item is None:
        return 0
    nbytes = getattr(item, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    size = getattr(item, "size", None)  # a PIL image: (width, height)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]) * int(size[1]) * 4
    waveform = getattr(item, "waveform", None)
    if waveform is not None:
        return _decoded_bytes(waveform)
    return len(item) if isinstance(item, str | bytes) else 0


#: How extraction decodes images: ``reduced`` decodes large JPEGs at a reduced size for the backbone's resize
#: (``ImageBackbone.decode_size()``), ``exact`` decodes every image at full size, ``device`` sends baseline JPEGs
#: compressed to where the model runs and decodes them there in batches (nvJPEG on a CUDA GPU), the rest as
#: ``reduced``.
DECODE_MODES = ("reduced", "exact", "device")

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
    the probe batches have been consumed). With none, pixel batches are prepared here on ``threads`` threads."""

    def __init__(
        self, source: ItemSource, collate: Collate, plan: BatchPlan, runtime: Runtime, probe: int = PROBE_BATCHES
    ) -> None:
        self.source, self.collate, self.plan, self.runtime = source, collate, plan, runtime
        self.workers = runtime.workers
        if in_process_on_cpu(runtime, source.pixels is not None):
            self.workers = 0  # the forward pass and the preparation take turns on every core
        self.probe = probe if runtime.auto_workers and self.workers > 0 else 0
        self.threads = 1  # threads preparing a batch in this process (set when iterating)
        self.timings: list[tuple[float, float]] = []  # (prepare s, step s) of the timed probe batches
        self.batch_bytes: int | None = None  # the largest probe batch's tensors (None: no probe)

    def __iter__(self) -> Iterator[Batch]:
        batches = _shared_memory_checked(self._batches())
        return (self._decoded(b) for b in batches) if self.source.encoded else batches

    def _decoded(self, b: Batch) -> Batch:
        """A batch whose JPEGs came compressed (:class:`EncodedBatch`), decoded, resized and cropped on the
        runtime's device; an item no decoder reads moves from the batch's positions to its bad items."""
        if not isinstance(b.inputs, EncodedBatch) or self.source.pixels is None:
            return b
        inputs, failed = b.inputs.decode(self.runtime.device, self.source.pixels)
        if failed:
            gone = {i for i, _ in failed}
            b.bad = b.bad + [(b.positions[i], reason) for i, reason in failed]
            b.positions = [p for i, p in enumerate(b.positions) if i not in gone]
        b.inputs = inputs
        return b

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
            self.batch_bytes = max(self.batch_bytes or 0, tensor_bytes(b.inputs) + tensor_bytes(b.views))
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
        if self.workers == 0 and self.source.pixels is not None:
            yield from self._threaded(plan)
        else:
            yield from self._data_loader(plan, self.workers)

    def _threaded(self, plan: Iterable[list[int]]) -> Iterator[Batch]:
        """Batches prepared in this process, the items of each spread over one thread per torch thread, between
        two forward passes. Each thread runs torch on one thread (no nested OpenMP teams)."""
        import torch

        self.threads = max(1, torch.get_num_threads())
        if self.threads == 1:
            yield from self._data_loader(plan, 0)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="tlkit-prepare") as pool:
            for idx in plan:
                with _one_thread():
                    b = self.collate(list(pool.map(self.source.__getitem__, idx)))
                if self.runtime.pin_memory:
                    b = b.pin_memory()
                yield b

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
            prefetch_factor=prefetch_depth(workers, self.batch_bytes) if workers else None,
            persistent_workers=False,
            worker_init_fn=freeze_inherited if workers else None,
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
    return Loader(source, Collate(backbone, views, source.pixels), plan, runtime)


def in_process_on_cpu(runtime: Runtime, pixels: bool) -> bool:
    """Whether ``--workers auto`` prepares batches in this process instead of worker processes: on the CPU, for
    the pixel path (decoding and ``uint8`` resizing run outside the GIL, so threads use every core). There the forward
    pass needs every core too, and taking turns wastes none; worker processes run beside the forward's OpenMP
    threads and each preemption of one of those stalls the others at their next barrier."""
    return pixels and runtime.auto_workers and runtime.device_type == "cpu"


def _is_tensor(item: Any) -> bool:
    import torch

    return isinstance(item, torch.Tensor)


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
    "in_process_on_cpu",
    "length_fn",
    "make_loader",
    "view_seed",
]
