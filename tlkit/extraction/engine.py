"""The extraction engine: items in, pooled embeddings out, streamed into a crash-safe HDF5 cache.

Pipeline: a DataLoader with worker processes decodes (the reader) and preprocesses (the backbone's eval transform,
plus K training transforms for ``views``) and collates; the main thread runs the forward pass under
``torch.inference_mode`` and autocast; a writer thread turns finished *windows* of rows into segment files, so disk
writes overlap compute. Items are planned in windows of ``commit_rows`` consecutive items. Text and audio are
length-bucketed inside a window and put back in dataset order before the window is committed; a crash loses at most
one window, and a resumed run recomputes exactly the windows an uninterrupted run would have.

See ``docs/extraction.md`` for the user view and ``tlkit/cache.py`` for the file handling.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import queue
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache import core as C
from tlkit.contract.backbone import Backbone
from tlkit.data.base import Dataset, Reader, Record, Skipped, check_on_error, load_or_skip
from tlkit.errors import BadInputError, CacheError, ConfigError, FingerprintMismatchError, TlkitError
from tlkit.runtime.progress import ProgressCallback, ProgressEvent, emit

if TYPE_CHECKING:
    import numpy as np
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Bytes of feature rows a window may hold before it is committed (what a crash can lose, and the writer's memory).
WINDOW_BYTES = 16 << 20
MAX_WINDOW_ROWS = 4096
#: Batch sizes for ``--batch-size auto``: on a GPU the engine starts here and halves on out-of-memory.
AUTO_BATCH = {"cpu": 32, "cuda": 256, "mps": 64}


# ---------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ExtractResult:
    """What an extraction did. ``status`` is ``created``, ``updated``, ``resumed`` or ``up-to-date``."""

    path: Path
    status: str
    n_items: int  # rows in the cache now
    n_computed: int  # items forwarded by this run
    n_reused: int  # rows taken from the existing cache or from an interrupted run
    n_skipped: int  # items recorded as unreadable in the cache
    skipped_now: list[Skipped] = field(default_factory=list)
    flags: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = ""
    precision: str = ""
    batch_size: int = 0
    workers: int = 0
    compute_seconds: float = 0.0  # from the first batch to the last: what items/s is measured over

    @property
    def items_per_s(self) -> float:
        """Items computed per second of the extraction loop (start-up and the final file excluded)."""
        return self.n_computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: items, skipped, seconds and items/s."""
        if self.status == "up-to-date":
            return f"{self.path} is up to date: {self.n_items:,} items, nothing to extract"
        notes = [f"{self.n_computed:,} computed"]
        if self.n_reused:
            notes.append(f"{self.n_reused:,} reused")
        notes.append(f"{self.n_skipped:,} skipped")
        notes += [f"{v:,} {k}" for k, v in sorted(self.flags.items()) if v]
        return (
            f"{self.status} {self.path}: {self.n_items:,} items ({', '.join(notes)}) in {self.seconds:.1f} s, "
            f"{self.items_per_s:,.1f} items/s"
        )


# ---------------------------------------------------------------------------------------------------------------
# option resolution
# ---------------------------------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> torch.device:
    import torch

    spec = (device or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX). Without it, oneDNN emulates bf16 and autocast
    is several times *slower* than fp32 (measured: docs/benchmarks.md)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``auto``: bf16 on a GPU that supports it (else fp16); on a CPU bf16 only with native bf16, else fp32."""
    import torch

    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if p == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "mps":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU has no bf16 support; use fp16 or auto")
    return p


def parse_layers(layers: str | Sequence[str] | None, backbone: Backbone) -> list[str]:
    """``last`` (none stored), ``all`` (every block the backbone offers) or a comma list of block names."""
    if layers is None or layers == "last" or layers == [] or layers == ():
        return []
    offered = backbone.layer_names()
    if layers == "all":
        if not offered:
            raise ConfigError(f"backbone {backbone.name} does not offer per-layer embeddings; use --layers last")
        return list(offered)
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else [str(s) for s in layers]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in offered]
    if unknown:
        from tlkit.errors import UnknownNameError

        raise UnknownNameError("layer", unknown[0], offered, hint=f"blocks of {backbone.name}; or use --layers all")
    return [n for n in offered if n in names]  # earliest first, no duplicates


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard {shard!r}: use I/N, e.g. 0/4") from None
    else:
        i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {i}/{n}: need 0 <= I < N")
    return int(i), int(n)


def resolve_batch_size(batch_size: int | str | None, device: torch.device) -> tuple[int, bool]:
    """``(size, auto)``. ``auto`` starts from a per-device size and backs off on out-of-memory."""
    if batch_size in (None, "auto"):
        return AUTO_BATCH.get(device.type, 32), True
    try:
        b = int(batch_size)
    except (TypeError, ValueError):
        raise ConfigError(f"--batch-size must be auto or a positive integer, not {batch_size!r}") from None
    if b < 1:
        raise ConfigError(f"--batch-size must be positive, not {b}")
    return b, False


def resolve_workers(workers: int | str | None, device: torch.device) -> int:
    if workers in (None, "auto"):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # One core stays with the main process. With a GPU, decoding is the bottleneck: use the other cores. On a
        # CPU the forward pass needs the cores too, so a few workers are enough to hide decoding.
        return min(32 if device.type == "cuda" else 4, max(cpus - 1, 0))
    try:
        w = int(workers)
    except (TypeError, ValueError):
        raise ConfigError(f"--workers must be auto or a non-negative integer, not {workers!r}") from None
    if w < 0:
        raise ConfigError(f"--workers must be >= 0, not {w}")
    return w


def window_rows(batch: int, dim: int, n_layers: int, views: int, itemsize: int, commit_rows: int | None) -> int:
    """Items per committed window: deterministic in the options, so a resumed run plans the same windows."""
    if commit_rows is not None:
        if int(commit_rows) < 1:
            raise ConfigError(f"commit rows must be positive, not {commit_rows}")
        return int(commit_rows)
    row_bytes = max(dim, 1) * (1 + n_layers + views) * itemsize
    rows = min(MAX_WINDOW_ROWS, max(batch, WINDOW_BYTES // row_bytes))
    return max(batch, rows // batch * batch)


def is_cnn(module: Any) -> bool:
    """A convolutional network (where ``channels_last`` pays): three or more 2-D convolutions."""
    from torch import nn

    return sum(isinstance(m, nn.Conv2d) for m in module.modules()) >= 3


# ---------------------------------------------------------------------------------------------------------------
# the input side: worker-process dataset and collate
# ---------------------------------------------------------------------------------------------------------------
def view_seed(item_id: str, k: int, base: int = 0) -> int:
    """A per-item, per-view seed: views are reproducible and independent of batching, workers and resumes."""
    digest = hashlib.sha256(f"{base}\0{item_id}\0{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class _Loaded:
    pos: int
    x: Any
    reason: str | None
    flags: tuple[str, ...] = ()
    views: list[Any] = field(default_factory=list)


class _ItemSource:
    """``torch.utils.data.Dataset`` over planned positions: decode, preprocess, augment. Runs in workers."""

    def __init__(self, records: Sequence[Record], reader: Reader, backbone: Backbone, views: int, seed: int) -> None:
        self.records, self.reader, self.backbone, self.views, self.seed = records, reader, backbone, views, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, pos: int) -> _Loaded:
        rec = self.records[pos]
        item, reason = load_or_skip(self.reader, rec)
        if reason is not None:
            return _Loaded(pos, None, reason)
        try:
            x = self.backbone.preprocess_item(item, train=False)
            flags = tuple(self.backbone.item_flags(x))
            views = [self._view(item, rec.id, k) for k in range(self.views)]
        except Exception as exc:  # a preprocessing failure is a bad item too, with its reason
            return _Loaded(pos, None, f"preprocessing failed ({type(exc).__name__}: {exc})")
        return _Loaded(pos, x, None, flags, views)

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
class _Batch:
    positions: list[int]  # positions of good items, in batch order
    bad: list[tuple[int, str]]
    flags: Counter
    inputs: Any = None
    views: list[Any] = field(default_factory=list)
    size: int = 0  # good + bad

    def pin_memory(self) -> _Batch:
        self.inputs = _tree_map(lambda t: t.pin_memory(), self.inputs)
        self.views = [_tree_map(lambda t: t.pin_memory(), v) for v in self.views]
        return self


class _Collate:
    def __init__(self, backbone: Backbone, views: int) -> None:
        self.backbone, self.views = backbone, views

    def __call__(self, loaded: list[_Loaded]) -> _Batch:
        good = [x for x in loaded if x.reason is None]
        flags: Counter = Counter()
        for x in good:
            flags.update(x.flags)
        out = _Batch(
            [x.pos for x in good], [(x.pos, str(x.reason)) for x in loaded if x.reason], flags, size=len(loaded)
        )
        if good:
            out.inputs = self.backbone.collate([x.x for x in good])
            out.views = [self.backbone.collate([x.views[k] for x in good]) for k in range(self.views)]
        return out


def _tree_map(fn: Callable[[Any], Any], obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_tree_map(fn, v) for v in obj)
    return obj


def _slice_batch(obj: Any, a: int, b: int) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj[a:b]
    if isinstance(obj, Mapping):
        return {k: _slice_batch(v, a, b) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_slice_batch(v, a, b) for v in obj)
    raise TlkitError(f"cannot split a batch of type {type(obj).__name__} after out-of-memory; use a fixed --batch-size")


class _BatchPlan:
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


def _length_fn(records: Sequence[Record], reader: Reader, backbone: Backbone) -> Callable[[int], int | None] | None:
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


# ---------------------------------------------------------------------------------------------------------------
# the forward side
# ---------------------------------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Runner:
    """Runs a loaded backbone on batches: device, precision, channels_last, OOM back-off. Reusable by other engines."""

    def __init__(
        self,
        backbone: Backbone,
        device: torch.device,
        precision: str,
        layers: Sequence[str] = (),
        auto_batch: bool = False,
        store_dtype: str = "float32",
    ) -> None:
        import torch

        self.backbone, self.device, self.precision, self.layers = backbone, device, precision, list(layers)
        self.auto_batch = auto_batch
        self.micro: int | None = None  # sub-batch size after an out-of-memory back-off
        self.out_dtype = torch.float16 if store_dtype == "float16" else torch.float32
        module = backbone.module
        module.eval()
        module.to(device)
        self.channels_last = backbone.modality == "image" and is_cnn(module)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def to_device(self, batch: Any) -> Any:
        import torch

        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(self.device, non_blocking=True)
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            return t

        return _tree_map(move, batch)

    def _forward_once(self, batch: Any, views: Sequence[Any]) -> tuple[Any, dict[str, Any], list[Any]]:
        import torch

        amp = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), amp:
            if self.layers:
                feats, lay = self.backbone.embed_layers(batch, self.layers)
            else:
                feats, lay = self.backbone.embed(batch), {}
            vfeats = [self.backbone.embed(v) for v in views]
        cast = lambda t: t.detach().to(self.out_dtype)  # noqa: E731
        return cast(feats), {k: cast(v) for k, v in lay.items()}, [cast(v) for v in vfeats]

    def forward(self, batch: Any, views: Sequence[Any], n: int) -> tuple[Any, dict[str, Any], list[Any]]:
        """Embed one batch (already on the device). With ``auto`` batch size an out-of-memory error halves the
        sub-batch and retries the same rows, so no batch is lost."""
        import torch

        step = self.micro or n
        while True:
            try:
                if step >= n:
                    return self._forward_once(batch, views)
                parts = [
                    self._forward_once(_slice_batch(batch, a, a + step), [_slice_batch(v, a, a + step) for v in views])
                    for a in range(0, n, step)
                ]
                feats = torch.cat([p[0] for p in parts])
                lay = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
                vf = [torch.cat([p[2][i] for p in parts]) for i in range(len(views))]
                return feats, lay, vf
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                if not self.auto_batch or step <= 1:
                    raise ConfigError(
                        f"out of memory at batch size {step} on {self.device}; use a smaller --batch-size or "
                        f"--batch-size auto"
                    ) from exc
                step = max(1, min(step, n) // 2)
                self.micro = step
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# the writer thread
# ---------------------------------------------------------------------------------------------------------------
class _WindowWriter(threading.Thread):
    """Collects a window's rows, restores dataset order and writes the segment, while the next batches compute."""

    def __init__(
        self,
        work: C.WorkDir,
        records: Sequence[Record],
        window: int,
        n: int,
        first_seq: int,
        views: int,
        layers: Sequence[str],
        on_commit: Callable[[int], None],
    ) -> None:
        super().__init__(name="tlkit-cache-writer", daemon=True)
        self.work, self.records, self.window, self.n = work, records, window, n
        self.seq, self.n_views, self.layers = first_seq, views, list(layers)
        self.on_commit = on_commit
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=8)  # bounded: memory stays flat if the disk is slow
        self.error: BaseException | None = None
        self.paths: list[Path] = []

    def run(self) -> None:
        parts: dict[int, list[Any]] = {}
        while True:
            msg = self.queue.get()
            if msg is None:
                return
            if self.error is not None:
                continue  # drain so the producer never blocks
            try:
                kind, w, payload = msg
                if kind == "rows":
                    parts.setdefault(w, []).append(payload)
                else:  # "commit"
                    self._commit(w, parts.pop(w, []))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc

    def _commit(self, w: int, parts: list[Any]) -> None:
        import numpy as np

        positions: list[int] = []
        bad: list[tuple[int, str]] = []
        flags: Counter = Counter()
        feats, views, lays = [], [], {k: [] for k in self.layers}
        for p in parts:
            event, pos, f, lay, vf, b, fl = p
            if event is not None:
                event.synchronize()
            positions += pos
            bad += b
            flags.update(fl)
            if pos:
                feats.append(f.numpy())
                for k in self.layers:
                    lays[k].append(lay[k].numpy())
                if self.n_views:
                    views.append(np.stack([v.numpy() for v in vf]))
        order = np.argsort(np.asarray(positions, np.int64), kind="stable")
        ids = [self.records[positions[i]].id for i in order]
        stamps = [self.records[positions[i]].stamp for i in order]
        if feats:
            features = np.concatenate(feats)[order]
            layers = {k: np.concatenate(v)[order] for k, v in lays.items()}
            vw = np.concatenate(views, axis=1)[:, order] if self.n_views else None
        else:
            features = np.zeros((0, 0), np.float32)
            layers, vw = {}, None
        bad.sort()
        skipped = [{"id": self.records[p].id, "reason": r, "stamp": self.records[p].stamp} for p, r in bad]
        data = C.SegmentData(w, ids, stamps, features, layers, vw, skipped, dict(flags))
        self.paths.append(self.work.write_segment(self.seq, data))
        self.seq += 1
        self.on_commit(len(positions) + len(bad))


# ---------------------------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------------------------
def resolve_backbone(backbone: str | Backbone, weights: str | os.PathLike[str] | None) -> Backbone:
    if isinstance(backbone, Backbone):
        return backbone.replace(weights=str(weights)) if weights is not None else backbone
    from tlkit.host.api import get_backbone

    return get_backbone(str(backbone), weights=str(weights) if weights is not None else "pretrained")


def resolve_input(
    input: str | os.PathLike[str] | Dataset,
    backbone: Backbone,
    reader: str | Reader | None,
    reader_options: Mapping[str, Any],
) -> tuple[Dataset, Reader]:
    from tlkit.data.open import get_reader, open_dataset

    if isinstance(input, Dataset):
        dataset = input
        rd = reader if isinstance(reader, Reader) else get_reader(dataset)
    else:
        name = reader if isinstance(reader, str) else None
        dataset = open_dataset(input, modality=backbone.modality, reader=name, **dict(reader_options))
        rd = reader if isinstance(reader, Reader) else get_reader(dataset)
    if dataset.modality != backbone.modality:
        raise BadInputError(
            f"{dataset.root}: {dataset.modality} data cannot go through {backbone.name}, a {backbone.modality} "
            f"backbone; pick a {dataset.modality} backbone"
        )
    return dataset, rd


def backbone_info(backbone: Backbone) -> dict[str, Any]:
    return {
        "name": backbone.name,
        "weights": backbone.weights,
        "init_kwargs": backbone.init_kwargs(),
        "spec": backbone.spec.to_dict(),
        "fingerprint": backbone.fingerprint(),
    }


def run_key(
    backbone: Backbone,
    dataset: Dataset,
    precision: str,
    store_dtype: str,
    layers: Sequence[str],
    views: int,
    view_seed_base: int = 0,
) -> dict[str, Any]:
    """What rows must share to live in one cache (see ``docs/cache-format.md``); stored as the metadata's ``key``."""
    return {
        "backbone": backbone.fingerprint(),
        "precision": precision,
        "store_dtype": store_dtype,
        "layers": list(layers),
        "views": views,
        "augment": backbone.augment if views else None,
        "view_seed": view_seed_base if views else None,
        "reader": dataset.reader,
        "reader_options": dataset.options,
    }


def extract(
    backbone: str | Backbone,
    input: str | os.PathLike[str] | Dataset,
    output: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | str = "auto",
    workers: int | str = "auto",
    layers: str | Sequence[str] = "last",
    views: int = 0,
    store_dtype: str = "float32",
    on_error: str = "skip",
    limit: int | None = None,
    overwrite: bool = False,
    shard: str | tuple[int, int] | None = None,
    commit_rows: int | None = None,
    reader: str | Reader | None = None,
    reader_options: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    keep_existing: bool = False,
    lock_timeout: float = 0.0,
    view_seed_base: int = 0,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> ExtractResult:
    """Extract pooled embeddings of every item under ``input`` into the HDF5 cache ``output``.

    Reruns are keyed: a complete, matching cache is left alone; new items are computed and merged in; an
    interrupted run resumes. A cache made with another backbone fingerprint, precision, store dtype, layer set or
    view count is refused unless ``overwrite=True``. ``keep_existing`` keeps cached rows whose items are not in
    ``input`` (used by :class:`tlkit.sklearn.TlkitEmbedder`); otherwise the cache mirrors ``input``. ``reuse``
    names other complete caches made with the same settings whose rows are copied instead of recomputed (sharded
    runs seed their parts from the merged cache).
    """
    started = time.perf_counter()
    output = Path(output)
    on_error = check_on_error(on_error)
    if store_dtype not in C.STORE_DTYPES:
        raise ConfigError(f"--store-dtype must be one of {', '.join(C.STORE_DTYPES)}, not {store_dtype!r}")
    views = int(views or 0)
    if views < 0:
        raise ConfigError(f"--views must be >= 0, not {views}")
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"--limit must be positive, not {limit}")
    shard_t = parse_shard(shard)
    if shard_t is not None and keep_existing:
        raise ConfigError("--shard cannot be combined with keeping rows outside the input")

    # Take the lock first: a second writer is refused at once, before any model or data is touched.
    with C.cache_lock(output, timeout=lock_timeout), _ignore_sigxfsz():
        bb = resolve_backbone(backbone, weights)
        dataset, rd = resolve_input(input, bb, reader, reader_options or {})
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        batch, auto_batch = resolve_batch_size(batch_size, dev)
        n_workers = resolve_workers(workers, dev)
        layer_names = parse_layers(layers, bb)
        key = run_key(bb, dataset, prec, store_dtype, layer_names, views, view_seed_base)
        itemsize = 2 if store_dtype == "float16" else 4
        W = window_rows(batch, bb.spec.embed_dim, len(layer_names), views, itemsize, commit_rows)
        selection = list(dataset.records[: int(limit)] if limit is not None else dataset.records)
        if shard_t is not None:
            selection = _shard_range(selection, shard_t, W)
        if not selection and shard_t is None:
            raise BadInputError(f"{dataset.root}: no items to extract")
        return _extract_locked(
            bb, dataset, rd, selection, output, key,
            dev=dev, prec=prec, batch=batch, auto_batch=auto_batch, n_workers=n_workers, layer_names=layer_names,
            views=views, store_dtype=store_dtype, on_error=on_error, overwrite=overwrite, shard=shard_t, W=W,
            progress=progress, keep_existing=keep_existing, started=started, limit=limit, seed=view_seed_base,
            reuse=[Path(r) for r in reuse],
        )  # fmt: skip


def _shard_range(records: list[Record], shard: tuple[int, int], window: int) -> list[Record]:
    """Shard ``i`` of ``n``: a contiguous run of whole windows, so each shard computes exactly the windows (and
    batches) a single run would, and merged shards equal a single run row for row."""
    i, n = shard
    n_windows = math.ceil(len(records) / window)
    lo, hi = i * n_windows // n, (i + 1) * n_windows // n
    return records[lo * window : hi * window]


@contextlib.contextmanager
def _ignore_sigxfsz() -> Iterator[None]:
    """A file-size limit (RLIMIT_FSIZE) kills a process with SIGXFSZ by default; ignored, the write fails with
    EFBIG instead and the engine ends with a clear message and a resumable cache."""
    sig = getattr(signal, "SIGXFSZ", None)
    if sig is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(sig, old)


def _read_base(output: Path, key: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The existing cache's metadata when its rows may be reused; refuse (or, with overwrite, ignore) otherwise."""
    if not output.exists():
        return None
    try:
        with C.FeatureCache(output) as fc:
            meta = fc.meta
            meta["_ids"] = fc.ids
            meta["_stamps"] = list(fc.file["stamps"].asstr()[()]) if "stamps" in fc.file else [""] * len(fc)
            meta["_labels"] = fc.labels
    except CacheError as exc:
        if overwrite:
            return None
        raise CacheError(f"{exc}; pass --overwrite to replace it") from None
    diff = C.key_mismatch(meta.get("key", {}), key)
    if diff:
        if overwrite:
            return None
        raise FingerprintMismatchError(
            f"{output} was extracted with other settings ({'; '.join(diff)}); its features must not be mixed with "
            f"these. Pass --overwrite to replace it, or write to another -o path"
        )
    return meta


def _extract_locked(
    bb: Backbone,
    dataset: Dataset,
    rd: Reader,
    selection: list[Record],
    output: Path,
    key: dict[str, Any],
    *,
    dev: torch.device,
    prec: str,
    batch: int,
    auto_batch: bool,
    n_workers: int,
    layer_names: list[str],
    views: int,
    store_dtype: str,
    on_error: str,
    overwrite: bool,
    shard: tuple[int, int] | None,
    W: int,
    progress: ProgressCallback | None,
    keep_existing: bool,
    started: float,
    limit: int | None,
    seed: int,
    reuse: Sequence[Path] = (),
) -> ExtractResult:
    import numpy as np

    base = _read_base(output, key, overwrite)
    work = C.WorkDir(output)
    plan = work.read_plan() if work.exists() else None
    if work.exists():
        stale = plan is not None and base is not None and base.get("run_id") == plan.get("run_id")
        if plan is None or stale:
            work.remove()  # a crash before the plan was written, or after the cache was published
            plan = None
        else:
            diff = C.key_mismatch(plan.get("key", {}), key)
            if diff:
                if not overwrite:
                    raise FingerprintMismatchError(
                        f"{work.path} holds an interrupted extraction with other settings ({'; '.join(diff)}); "
                        f"rerun that command to finish it, or pass --overwrite to discard it"
                    )
                work.remove()
                plan = None
            elif plan.get("window") != W:
                W = int(plan["window"])  # keep the interrupted run's windows, so resumed rows match exactly
    work.clear_temporaries()
    segments = work.segments() if plan is not None else []

    # What we already have: rows (id -> (stamp, source, row)) and known-bad items (id -> (stamp, reason)).
    have: dict[str, tuple[str, int, int]] = {}
    bad_known: dict[str, tuple[str, str]] = {}
    sources: list[Path] = []
    if base is not None:
        sources.append(output)
        for r, (i, s) in enumerate(zip(base["_ids"], base["_stamps"], strict=True)):
            have[i] = (s, 0, r)
        for sk in base.get("skipped", []):
            if "stamp" in sk:
                bad_known[sk["id"]] = (sk["stamp"], sk["reason"])
    for extra in reuse:  # other caches with this key: their rows are copied, never recomputed; ours win
        other = _read_base(extra, key, overwrite) if extra != output else None
        if other is not None:
            sources.append(extra)
            for r, (i, s) in enumerate(zip(other["_ids"], other["_stamps"], strict=True)):
                have.setdefault(i, (s, len(sources) - 1, r))
            for sk in other.get("skipped", []):
                if "stamp" in sk and sk["id"] not in have:
                    bad_known.setdefault(sk["id"], (sk["stamp"], sk["reason"]))
    for seg in segments:
        _add_segment(seg, sources, have, bad_known)

    def known(rec: Record) -> bool:
        h = have.get(rec.id)
        if h is not None and h[0] == rec.stamp:
            return True
        b = bad_known.get(rec.id)
        return b is not None and b[0] == rec.stamp

    todo = [rec for rec in selection if not known(rec)]
    n_reused = len(selection) - len(todo)

    # Nothing to compute and nothing changed: a no-op that says so.
    if not todo and base is not None and not segments and keep_existing:
        n = len(base["_ids"])
        return ExtractResult(output, "up-to-date", n, 0, n_reused, len(base.get("skipped", [])),
                             seconds=time.perf_counter() - started, device=str(dev), precision=prec,
                             batch_size=batch, workers=n_workers)  # fmt: skip
    if not todo and base is not None and not segments:
        final_ids, _, _ = _final_rows(selection, have, bad_known)
        by_id = {r.id: r for r in selection}
        if (
            final_ids == list(base["_ids"])
            and [by_id[i].label for i in final_ids] == [int(x) for x in base["_labels"]]
            and [by_id[i].stamp for i in final_ids] == list(base["_stamps"])
            and base.get("class_names") == list(dataset.class_names)
        ):
            return ExtractResult(
                output, "up-to-date", len(final_ids), 0, len(final_ids), len(base.get("skipped", [])),
                seconds=time.perf_counter() - started, device=str(dev), precision=prec, batch_size=batch,
                workers=n_workers,
            )  # fmt: skip
    if todo and plan is None:
        plan = {"format": "tlkit-work", "version": 1, "run_id": uuid.uuid4().hex, "key": key, "window": W,
                "todo": len(todo), "target": output.name}  # fmt: skip
        work.start(plan)
    run_id = plan["run_id"] if plan is not None else uuid.uuid4().hex
    status = "resumed" if segments else "updated" if base is not None else "replaced" if output.exists() else "created"

    skipped_now: list[Skipped] = []
    flags: Counter = Counter()
    for seg in segments:
        flags.update(seg.flags)
    compute_seconds = 0.0
    if todo:
        new_paths, new_flags, skipped_now, compute_seconds = _compute(
            bb, rd, todo, work, first_seq=(segments[-1].seq + 1) if segments else 0, window=W, batch=batch,
            auto_batch=auto_batch, n_workers=n_workers, dev=dev, prec=prec, layer_names=layer_names, views=views,
            store_dtype=store_dtype, on_error=on_error, progress=progress, seed=seed,
        )  # fmt: skip
        flags.update(new_flags)
        for p in new_paths:
            _add_segment(work._read_segment(p), sources, have, bad_known)

    # Assemble the final cache: selection order, minus known-bad items; rows from the old cache or segments.
    final_ids, src, rows = _final_rows(selection, have, bad_known)
    by_id = {r.id: r for r in selection}
    labels = [by_id[i].label for i in final_ids]
    stamps = [by_id[i].stamp for i in final_ids]
    if keep_existing and base is not None:
        chosen = set(final_ids)
        extra = [
            (i, s, base["_labels"][r]) for r, (i, s) in enumerate(zip(base["_ids"], base["_stamps"], strict=True))
            if i not in chosen and have.get(i, (None, -1, -1))[1] == 0
        ]  # fmt: skip
        final_ids = [e[0] for e in extra] + final_ids
        stamps = [e[1] for e in extra] + stamps
        labels = [int(e[2]) for e in extra] + labels
        src = [0] * len(extra) + src
        rows = [have[e[0]][2] for e in extra] + rows
    sel_ids = {r.id for r in selection}
    skipped_all = [
        {"id": i, "reason": reason, "stamp": stamp} for i, (stamp, reason) in bad_known.items() if i in sel_ids
    ]
    if shard is None or shard[0] == 0:
        skipped_all += [s.to_dict() for s in dataset.skipped]
    if not final_ids:
        work.remove()
        first = skipped_all[0] if skipped_all else None
        why = f" (first: {first['id']}: {first['reason']})" if first else ""
        if shard is not None:
            raise BadInputError(f"shard {shard[0]}/{shard[1]} of {dataset.root} holds no readable items{why}")
        raise BadInputError(f"{dataset.root}: none of the {len(selection)} items could be read{why}")
    meta = {
        "format": C.FORMAT_NAME,
        "format_version": C.FORMAT_VERSION,
        "tlkit_version": _tlkit_version(),
        "complete": False,
        "run_id": run_id,
        "created": C._now(),
        "backbone": backbone_info(bb),
        "key": key,
        "precision": prec,
        "store_dtype": store_dtype,
        "layers": layer_names,
        "views": views,
        "class_names": list(dataset.class_names),
        "dataset": {
            "root": str(dataset.root),
            "reader": dataset.reader,
            "options": dataset.options,
            "fingerprint": dataset.fingerprint(),
            "records": len(dataset.records),
            "limit": limit,
            "mode": "union" if keep_existing else "mirror",
        },
        "shard": {"index": shard[0], "count": shard[1], "window": W} if shard is not None else None,
        "skipped": skipped_all,
        "flags": dict(flags),
        "extraction": {"device": str(dev), "batch_size": batch, "workers": n_workers, "window": W},
    }
    work.path.mkdir(parents=True, exist_ok=True)
    tmp = work.path / "assembled.h5.tmp"
    C.assemble(
        tmp,
        C.AssemblyPlan(sources, np.asarray(src, np.int32), np.asarray(rows, np.int64), final_ids,
                       np.asarray(labels, np.int64), stamps),  # fmt: skip
        meta, layers=layer_names, n_views=views, store_dtype=store_dtype, progress=progress, started=started,
    )  # fmt: skip
    try:
        C.publish(tmp, output)
    except OSError as exc:
        raise C.write_error(output, exc, kept="finished rows are kept") from exc
    work.remove()
    n_computed = len(todo) - len([s for s in skipped_now])
    result = ExtractResult(
        output, status, len(final_ids), n_computed, n_reused, len(skipped_all), skipped_now, dict(flags),
        time.perf_counter() - started, str(dev), prec, batch, n_workers, compute_seconds,
    )  # fmt: skip
    emit(progress, ProgressEvent("done", len(final_ids), len(final_ids), len(skipped_all), result.seconds,
                                 result.summary()))  # fmt: skip
    return result


def _add_segment(
    seg: C.Segment,
    sources: list[Path],
    have: dict[str, tuple[str, int, int]],
    bad_known: dict[str, tuple[str, str]],
) -> None:
    """Register a segment's rows and skips; newer sources win over older ones."""
    sources.append(seg.path)
    si = len(sources) - 1
    for r, (i, s) in enumerate(zip(seg.ids, seg.stamps, strict=True)):
        have[i] = (s, si, r)
        bad_known.pop(i, None)
    for sk in seg.skipped:
        bad_known[sk["id"]] = (sk["stamp"], sk["reason"])
        have.pop(sk["id"], None)


def _final_rows(
    selection: Sequence[Record], have: Mapping[str, tuple[str, int, int]], bad: Mapping[str, tuple[str, str]]
) -> tuple[list[str], list[int], list[int]]:
    ids, src, rows = [], [], []
    for rec in selection:
        h = have.get(rec.id)
        if h is not None and h[0] == rec.stamp:
            ids.append(rec.id)
            src.append(h[1])
            rows.append(h[2])
        elif rec.id not in bad:
            raise CacheError(f"internal error: no row for {rec.id}")  # every todo item is a row or a skip
    return ids, src, rows


def _tlkit_version() -> str:
    from tlkit import __version__

    return __version__


def _compute(
    bb: Backbone,
    rd: Reader,
    todo: list[Record],
    work: C.WorkDir,
    *,
    first_seq: int,
    window: int,
    batch: int,
    auto_batch: bool,
    n_workers: int,
    dev: torch.device,
    prec: str,
    layer_names: list[str],
    views: int,
    store_dtype: str,
    on_error: str,
    progress: ProgressCallback | None,
    seed: int,
) -> tuple[list[Path], Counter, list[Skipped], float]:
    """Run the loader, the forward pass and the writer over ``todo``; return the new segment files."""
    import torch
    from torch.utils.data import DataLoader

    bb.load()
    runner = Runner(bb, dev, prec, layer_names, auto_batch, store_dtype)
    source = _ItemSource(todo, rd, bb, views, seed)
    sampler = _BatchPlan(len(todo), window, batch, _length_fn(todo, rd, bb))
    loader = DataLoader(
        source,  # type: ignore[arg-type]
        batch_sampler=sampler,  # type: ignore[arg-type]
        num_workers=n_workers,
        collate_fn=_Collate(bb, views),
        pin_memory=dev.type == "cuda",
        prefetch_factor=2 if n_workers else None,
        persistent_workers=False,
    )
    n = len(todo)
    committed = [0]
    writer = _WindowWriter(
        work, todo, window, n, first_seq, views, layer_names, lambda k: committed.__setitem__(0, committed[0] + k)
    )
    writer.start()
    done = 0
    skipped: list[Skipped] = []
    flags: Counter = Counter()
    received: Counter = Counter()
    use_events = dev.type == "cuda"
    started = time.perf_counter()  # rates and ETA count the loop only, not imports and model loading
    try:
        emit(progress, ProgressEvent("extract", 0, n, 0, 0.0))
        for b in loader:
            if writer.error is not None:
                raise writer.error
            w = (b.positions[0] if b.positions else b.bad[0][0]) // window
            for pos, reason in b.bad:
                rec = todo[pos]
                if on_error == "fail":
                    raise BadInputError(
                        f"{rec.id}: {reason}; fix or remove it and rerun (finished work is kept), or use "
                        f"--on-error skip"
                    )
                skipped.append(Skipped(rec.id, reason))
            if b.positions:
                inputs = runner.to_device(b.inputs)
                vin = [runner.to_device(v) for v in b.views]
                feats, lay, vf = runner.forward(inputs, vin, len(b.positions))
                feats = feats.to("cpu", non_blocking=use_events)
                lay = {k: v.to("cpu", non_blocking=use_events) for k, v in lay.items()}
                vf = [v.to("cpu", non_blocking=use_events) for v in vf]
                event = None
                if use_events:
                    event = torch.cuda.Event()
                    event.record()
            else:
                feats, lay, vf, event = None, {}, [], None
            flags.update(b.flags)
            writer.queue.put(("rows", w, (event, b.positions, feats, lay, vf, b.bad, b.flags)))
            received[w] += b.size
            if received[w] == min(window, n - w * window):
                writer.queue.put(("commit", w, None))
            done += b.size
            emit(progress, ProgressEvent("extract", done, n, len(skipped), time.perf_counter() - started,
                                         info={"committed": committed[0]}))  # fmt: skip
    finally:
        writer.queue.put(None)
        writer.join()
    if writer.error is not None:
        raise writer.error
    return writer.paths, flags, skipped, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------------------
# in-memory embedding (no cache): for predict and small jobs
# ---------------------------------------------------------------------------------------------------------------
def embed_records(
    backbone: Backbone,
    records: Sequence[Record],
    reader: Reader,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | str = "auto",
    workers: int | str = 0,
    on_error: str = "skip",
) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """Embed records in memory: ``(X [n_ok, D] float32, kept positions, skipped)``. Uses the same loader, bucketing
    and precision rules as :func:`extract`, without a cache."""
    import numpy as np

    on_error = check_on_error(on_error)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    batch, auto = resolve_batch_size(batch_size, dev)
    n_workers = resolve_workers(workers, dev)
    from torch.utils.data import DataLoader

    backbone.load()
    runner = Runner(backbone, dev, prec, (), auto)
    loader = DataLoader(
        _ItemSource(records, reader, backbone, 0, 0),  # type: ignore[arg-type]
        batch_sampler=_BatchPlan(len(records), max(len(records), 1), batch, _length_fn(records, reader, backbone)),  # type: ignore[arg-type]
        num_workers=n_workers,
        collate_fn=_Collate(backbone, 0),
        pin_memory=dev.type == "cuda",
    )
    out: dict[int, np.ndarray] = {}
    skipped: list[Skipped] = []
    for b in loader:
        for pos, reason in b.bad:
            if on_error == "fail":
                raise BadInputError(f"{records[pos].id}: {reason}; fix or remove it, or use --on-error skip")
            skipped.append(Skipped(records[pos].id, reason))
        if b.positions:
            feats, _, _ = runner.forward(runner.to_device(b.inputs), [], len(b.positions))
            arr = feats.float().cpu().numpy()
            for i, p in enumerate(b.positions):
                out[p] = arr[i]
    kept = sorted(out)
    dim = backbone.spec.embed_dim if not kept else out[kept[0]].shape[0]
    X = np.stack([out[p] for p in kept]) if kept else np.zeros((0, dim), np.float32)
    return X, kept, skipped
