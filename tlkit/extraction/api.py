"""The extraction entry points: :func:`extract` (items into a feature cache) and :func:`embed_records` (in memory).

:func:`extract` is the one way in, for the Python API, the CLI and every rank under ``torchrun``: it checks the
options, resolves the runtime once (:func:`tlkit.runtime.resolve`, stage ``extract``), plans the job
(:mod:`tlkit.extraction.plan`) and runs it in this process (:mod:`tlkit.extraction.engine`) or, when the runtime is
one rank of several, sharded over the ranks (:mod:`tlkit.extraction.distributed`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.cache import cache_lock
from tlkit.contract.backbone import Backbone
from tlkit.data.base import Dataset, Reader, Record, Skipped, check_on_error
from tlkit.errors import BadInputError, ConfigError
from tlkit.extraction.distributed import extract_sharded
from tlkit.extraction.engine import ExtractResult, run_job
from tlkit.extraction.forward import NONFINITE_REASON, Runner
from tlkit.extraction.loader import make_loader
from tlkit.extraction.plan import ExtractOptions, batch_size_of, parse_shard, plan_job, resolve_backbone
from tlkit.runtime.progress import ProgressCallback
from tlkit.runtime.resolution import Runtime, RuntimeOptions, resolve

if TYPE_CHECKING:
    import numpy as np


def extract(
    backbone: str | Backbone,
    input: str | os.PathLike[str] | Dataset,
    output: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
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
    decode: str = "reduced",
) -> ExtractResult:
    """Extract pooled embeddings of every item under ``input`` into the HDF5 cache ``output``.

    Reruns are keyed: a complete, matching cache is left alone; new items are computed and merged in; an
    interrupted run resumes. A cache made with another backbone fingerprint, precision, store dtype, layer set or
    view count is refused unless ``overwrite=True``. ``keep_existing`` keeps cached rows whose items are not in
    ``input`` (used by :class:`tlkit.sklearn.TlkitEmbedder`); otherwise the cache mirrors ``input``. ``reuse``
    names other complete caches made with the same settings whose rows are copied instead of recomputed.

    ``preprocess`` overrides the backbone's preprocessing (``{"input_size": [3, 160, 160]}``), as
    ``tlkit.get_backbone(..., preprocess=...)`` does; the overrides are part of the fingerprint and the cache key.
    ``device``, ``precision``, ``batch_size`` and ``workers`` follow the runtime policy (``docs/runtime.md``);
    ``workers="auto"`` picks the count from a measurement of the first batches. ``decode="reduced"`` (the default)
    decodes large JPEGs at a reduced size the backbone's resize allows; ``"exact"`` decodes in full; ``"device"``
    ships baseline JPEGs compressed and decodes them in batches on the model's device (nvJPEG on a CUDA GPU). The
    mode is part of the key; ``docs/extraction.md`` gives the tolerances.
    Started by ``torchrun`` with two or more processes, every rank extracts a shard of ``input`` and rank 0
    merges them into ``output`` (``shard`` is then implied); a union (``keep_existing``) runs whole in each
    process, one after the other under the cache's lock.
    """
    started = time.perf_counter()
    output = Path(output)
    options = ExtractOptions.checked(layers, views, store_dtype, on_error, limit, commit_rows, view_seed_base, decode)
    shard_t = parse_shard(shard)
    if shard_t is not None and keep_existing:
        raise ConfigError("{param} cannot be combined with keeping rows outside the input", param="shard")
    # The backbone first (plan_job then sees an object, as with tlkit.get_backbone(...)): an unknown name is refused
    # before the runtime is resolved, which imports torch.
    if preprocess:
        backbone, weights = with_preprocess(backbone, weights, preprocess), None
    else:
        backbone, weights = resolve_backbone(backbone, weights), None
    if not output.exists():  # a new cache needs the weights: no network, say, is one line now, not after retries
        backbone.check_weights_available()
    runtime = resolve("extract", RuntimeOptions.of(device, precision, batch_size, workers))
    plan = functools.partial(
        plan_job, backbone, input, runtime, options, weights=weights, reader=reader, reader_options=reader_options
    )
    sources = [Path(r) for r in reuse]
    if runtime.distributed and not keep_existing:
        if shard_t is not None:
            raise ConfigError(
                f"{{param}} {shard_t[0]}/{shard_t[1]} is for independent jobs; under torchrun every rank takes its "
                f"own shard: leave {{param}} out",
                param="shard",
            )
        return extract_sharded(plan(), output, overwrite=overwrite, reuse=sources, progress=progress, started=started)
    # Take the lock first: a second writer is refused at once, before any model or data is touched.
    with cache_lock(output, timeout=lock_timeout):
        return run_job(
            plan(), output, shard=shard_t, overwrite=overwrite, keep_existing=keep_existing,
            reuse=sources, progress=progress, started=started,
        )  # fmt: skip


def with_preprocess(
    backbone: str | Backbone, weights: str | os.PathLike[str] | None, preprocess: Mapping[str, Any]
) -> Backbone:
    """``backbone`` (a name or an object) with ``weights`` and the preprocessing overrides applied, validated."""
    if isinstance(backbone, Backbone):
        changes: dict[str, Any] = {"preprocess": dict(preprocess)}
        if weights is not None:
            changes["weights"] = str(weights)
        return backbone.replace(**changes)
    from tlkit.host.api import get_backbone

    return get_backbone(str(backbone), weights=str(weights or "pretrained"), preprocess=dict(preprocess))


def embed_records(
    backbone: Backbone,
    records: Sequence[Record],
    reader: Reader,
    *,
    runtime: Runtime,
    on_error: str = "skip",
    decode: str = "reduced",
) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """Embed records in memory: ``(X [n_ok, D] float32, kept positions, skipped)``. Uses the same loader, bucketing
    and forward pass as :func:`extract`, without a cache, under ``runtime`` (resolved for ``extract`` or
    ``predict``: ``tlkit.runtime.resolve(stage, RuntimeOptions.of(...))``)."""
    import numpy as np

    on_error = check_on_error(on_error)
    backbone.load()
    batch = batch_size_of(runtime)
    loader = make_loader(records, reader, backbone, runtime, batch=batch, window=max(len(records), 1), decode=decode)
    out: dict[int, np.ndarray] = {}
    skipped: list[Skipped] = []
    with Runner(backbone, runtime) as runner:
        for b in loader:
            for pos, reason in b.bad:
                if on_error == "fail":
                    raise BadInputError(f"{records[pos].id}: {reason}; fix or remove it, or set {{param}} to skip",
                                        param="on_error")  # fmt: skip
                skipped.append(Skipped(records[pos].id, reason))
            if b.positions:
                feats, _, _ = runner.forward(runner.to_device(b.inputs), [], len(b.positions))
                arr = feats.float().cpu().numpy()
                for i, p in enumerate(b.positions):
                    if np.isfinite(arr[i]).all():
                        out[p] = arr[i]
                    else:  # never a NaN row: a named skip, as in a cache
                        skipped.append(Skipped(records[p].id, NONFINITE_REASON))
    kept = sorted(out)
    dim = backbone.spec.embed_dim if not kept else out[kept[0]].shape[0]
    X = np.stack([out[p] for p in kept]) if kept else np.zeros((0, dim), np.float32)
    return X, kept, skipped


__all__ = ["embed_records", "extract", "with_preprocess"]
