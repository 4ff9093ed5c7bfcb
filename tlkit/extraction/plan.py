"""What an extraction will do, decided before any item is read: the checked options, the backbone and data, the
run key and the window plan, bundled in one frozen :class:`ExtractJob`.

Every process of a run (a single process, or each rank under ``torchrun``) builds its job here from the same options,
so the key a cache is stored under and the windows it is committed in are written in one place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.cache import STORE_DTYPES
from tlkit.contract.backbone import Backbone
from tlkit.data.base import Dataset, Reader, Record, check_on_error
from tlkit.errors import BadInputError, ConfigError, UnknownNameError
from tlkit.extraction.loader import check_decode

if TYPE_CHECKING:
    from tlkit.runtime.resolution import Runtime

#: Bytes of feature rows a window may hold before it is committed (what a crash can lose, and the writer's memory).
WINDOW_BYTES = 16 << 20
MAX_WINDOW_ROWS = 4096


@dataclass(frozen=True)
class ExtractOptions:
    """The extraction's own options (the runtime's are in :class:`tlkit.runtime.RuntimeOptions`), checked."""

    layers: str | Sequence[str] = "last"
    views: int = 0
    store_dtype: str = "float32"
    on_error: str = "skip"
    limit: int | None = None
    commit_rows: int | None = None
    view_seed: int = 0
    decode: str = "reduced"

    @classmethod
    def checked(
        cls,
        layers: str | Sequence[str] = "last",
        views: int | None = 0,
        store_dtype: str = "float32",
        on_error: str = "skip",
        limit: int | None = None,
        commit_rows: int | None = None,
        view_seed: int = 0,
        decode: str = "reduced",
    ) -> ExtractOptions:
        if store_dtype not in STORE_DTYPES:
            raise ConfigError(
                f"{{param}} must be one of {', '.join(STORE_DTYPES)}, not {store_dtype!r}", param="store_dtype"
            )
        n_views = int(views or 0)
        if n_views < 0:
            raise ConfigError(f"{{param}} must be >= 0, not {n_views}", param="views")
        if limit is not None and int(limit) < 1:
            raise ConfigError(f"{{param}} must be positive, not {limit}", param="limit")
        if commit_rows is not None and int(commit_rows) < 1:
            raise ConfigError(f"{{param}} must be positive, not {commit_rows}", param="commit_rows")
        return cls(
            layers, n_views, store_dtype, check_on_error(on_error),
            None if limit is None else int(limit), None if commit_rows is None else int(commit_rows), int(view_seed),
            check_decode(decode),
        )  # fmt: skip


@dataclass(frozen=True)
class ExtractJob:
    """Everything an extraction needs, resolved: nothing here is ``auto``.

    ``key`` is what rows must share to live in one cache (:func:`run_key`); ``window`` is the number of consecutive
    items committed together (:func:`window_rows`), so a resumed or sharded run computes the very same windows.
    """

    backbone: Backbone
    dataset: Dataset
    reader: Reader
    runtime: Runtime
    layers: tuple[str, ...]
    views: int
    store_dtype: str
    on_error: str
    limit: int | None
    view_seed: int
    key: dict[str, Any]
    window: int
    decode: str = "reduced"  # how images are decoded (tlkit.extraction.loader.DECODE_MODES), part of the key

    @property
    def batch_size(self) -> int:
        return batch_size_of(self.runtime)

    def records(self) -> Sequence[Record]:
        """The items this run covers: the dataset's, up to ``limit`` (a slice: a table stays a table)."""
        records = self.dataset.records
        return records[: self.limit] if self.limit is not None else records


def plan_job(
    backbone: str | Backbone,
    input: str | os.PathLike[str] | Dataset,
    runtime: Runtime,
    options: ExtractOptions,
    *,
    weights: str | os.PathLike[str] | None = None,
    reader: str | Reader | None = None,
    reader_options: Mapping[str, Any] | None = None,
) -> ExtractJob:
    """Resolve the backbone (unloaded) and the data, and fix the key and the window plan."""
    bb = resolve_backbone(backbone, weights)
    dataset, rd = resolve_input(input, bb, reader, reader_options or {})
    layers = tuple(parse_layers(options.layers, bb))
    key = run_key(
        bb, dataset, runtime.precision, options.store_dtype, layers, options.views, options.view_seed, options.decode
    )
    itemsize = 2 if options.store_dtype == "float16" else 4
    window = options.commit_rows or window_rows(
        batch_size_of(runtime), _described(bb).spec.embed_dim, len(layers), options.views, itemsize
    )
    return ExtractJob(
        bb, dataset, rd, runtime, layers, options.views, options.store_dtype, options.on_error, options.limit,
        options.view_seed, key, window, options.decode,
    )  # fmt: skip


def batch_size_of(runtime: Runtime) -> int:
    """The runtime's batch size; only stages with a batch size (extract, predict) run the forward pass here."""
    if runtime.batch_size is None:
        raise ValueError(f"a {runtime.stage!r} runtime has no batch size; resolve the runtime for 'extract'")
    return runtime.batch_size


def parse_layers(layers: str | Sequence[str] | None, backbone: Backbone) -> list[str]:
    """``last`` (none stored), ``all`` (every block the backbone offers) or a comma list of block names."""
    if layers is None or layers == "last" or layers == [] or layers == ():
        return []
    offered = backbone.layer_names()
    if layers == "all":
        if not offered:
            raise ConfigError(
                f"backbone {backbone.name} does not offer per-layer embeddings; set {{param}} to last", param="layers"
            )
        return list(offered)
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else [str(s) for s in layers]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in offered]
    if unknown:
        raise UnknownNameError("layer", unknown[0], offered, hint=f"the blocks of {backbone.name}, or all")
    return [n for n in offered if n in names]  # earliest first, no duplicates


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` or ``(I, N)``: shard ``I`` of ``N``."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ConfigError(f"{{param}} {shard!r}: use I/N, e.g. 0/4", param="shard") from None
    else:
        i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"{{param}} {i}/{n}: need 0 <= I < N", param="shard")
    return int(i), int(n)


def window_rows(batch: int, dim: int, n_layers: int, views: int, itemsize: int) -> int:
    """Items per committed window: deterministic in the options, so a resumed run plans the same windows."""
    row_bytes = max(dim, 1) * (1 + n_layers + views) * itemsize
    rows = min(MAX_WINDOW_ROWS, max(batch, WINDOW_BYTES // row_bytes))
    return max(batch, rows // batch * batch)


def shard_unit(n: int, count: int, window: int, batch: int = 1) -> int:
    """The granule shards are cut in: whole windows when there are at least ``count`` of them (each shard then
    computes exactly the windows and batches a single run would), else whole batches, else single items. So every
    shard of a dataset with at least ``count`` items gets work. It depends only on the plan (``n``, ``count``, the
    window and batch sizes), so a rerun of the same command cuts the same shards and resumes them."""
    for unit in (window, batch):
        if unit >= 1 and math.ceil(n / unit) >= count:
            return unit
    return 1


def shard_bounds(n: int, shard: tuple[int, int], window: int, batch: int = 1) -> tuple[int, int]:
    """``(lo, hi)``: the items of shard ``i`` of ``n_shards``, a contiguous run of whole units (:func:`shard_unit`)
    spread as evenly as the units allow; the shards are disjoint and together cover ``0..n``."""
    i, count = shard
    unit = shard_unit(n, count, window, batch)
    n_units = math.ceil(n / unit)
    lo, hi = i * n_units // count, (i + 1) * n_units // count
    return min(lo * unit, n), min(hi * unit, n)


def shard_range(records: Sequence[Record], shard: tuple[int, int], window: int, batch: int = 1) -> Sequence[Record]:
    """Shard ``i`` of ``n``: the records between :func:`shard_bounds` (a slice). No item is in two shards, and
    merged shards hold every item of a single run, in its order."""
    lo, hi = shard_bounds(len(records), shard, window, batch)
    return records[lo:hi]


def shard_count(n: int, world_size: int) -> int:
    """How many ranks get a shard under ``torchrun``: all of them, unless there are fewer items than ranks."""
    return max(1, min(world_size, n))


def run_key(
    backbone: Backbone,
    dataset: Dataset,
    precision: str,
    store_dtype: str,
    layers: Sequence[str],
    views: int,
    view_seed_base: int = 0,
    decode: str = "reduced",
) -> dict[str, Any]:
    """What rows must share to live in one cache (see ``docs/cache-format.md``); stored as the metadata's ``key``.
    ``decode`` is recorded for images only (a cache made before it existed reads as ``reduced``: see
    :data:`tlkit.cache.format.KEY_DEFAULTS`)."""
    return {
        "backbone": _described(backbone).fingerprint,
        "precision": precision,
        "store_dtype": store_dtype,
        "layers": list(layers),
        "views": views,
        "augment": backbone.augment if views else None,
        "view_seed": view_seed_base if views else None,
        "reader": dataset.reader,
        "reader_options": dataset.options,
        **({"decode": decode} if dataset.modality == "image" else {}),
    }


def _described(backbone: Backbone) -> Any:
    """The backbone's spec and fingerprint, remembered on disk when they can be (so an up-to-date rerun does not build
    the model: :mod:`tlkit.host.describe` states the rule)."""
    from tlkit.host.describe import describe

    return describe(backbone)


def resolve_backbone(backbone: str | Backbone, weights: str | os.PathLike[str] | None) -> Backbone:
    """A backbone object (not loaded): a name is looked up, an object gets ``weights`` when they are given."""
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
    """The dataset under ``input`` (opened with the backbone's modality) and the reader that decodes its items."""
    from tlkit.host.readers import get_reader, open_dataset

    if isinstance(input, Dataset):
        dataset = input
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
    """The backbone as the cache metadata records it (enough to rebuild it)."""
    return {
        "name": backbone.name,
        "weights": backbone.weights,
        "init_kwargs": backbone.init_kwargs(),
        "spec": backbone.spec.to_dict(),
        "fingerprint": backbone.fingerprint(),
    }


__all__ = [
    "ExtractJob",
    "ExtractOptions",
    "backbone_info",
    "batch_size_of",
    "parse_layers",
    "parse_shard",
    "plan_job",
    "resolve_backbone",
    "resolve_input",
    "run_key",
    "shard_bounds",
    "shard_count",
    "shard_range",
    "shard_unit",
    "window_rows",
]
