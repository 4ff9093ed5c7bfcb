"""Cached features as training tables: in memory as tensors when they fit, streamed in chunks otherwise.

A :class:`FeatureTable` is a set of rows of one cache array (the final features or one cached layer), with their
labels, and optionally the cached augmented views of those rows. It yields shuffled batches on the training device;
with views on, each item contributes one randomly chosen view per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Bytes of features read per chunk when streaming from HDF5.
CHUNK_BYTES = 64 << 20
#: Load features into memory when they need less than this share of the available RAM.
MEMORY_SHARE = 0.5
#: Bytes of features head training may hold in memory (``512M``, ``8G``, ``1000000``); larger tables are streamed
#: from the HDF5 file in chunks no bigger than this. Default: ``MEMORY_SHARE`` of the available RAM.
MEMORY_BUDGET_ENV = "TLKIT_MEMORY_BUDGET"


@dataclass
class FeatureSource:
    """One array of a cache, ready to be cut into tables.

    ``features`` is ``[N, D]`` and ``views`` ``[K, N, D]`` (h5py datasets or NumPy arrays); ``labels`` is ``[N]``
    with -1 for unlabelled items. ``ids`` gives the item ids, read only when an error names rows.
    """

    name: str
    features: Any
    labels: np.ndarray
    class_names: list[str]
    views: Any | None = None
    ids: Callable[[], Sequence[str]] | None = None

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_views(self) -> int:
        return 0 if self.views is None else int(self.views.shape[0])


def available_memory() -> int:
    """Bytes of RAM available now (Linux ``MemAvailable``; a conservative 2 GiB elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


def memory_budget() -> int:
    """Bytes of features that may be loaded: ``TLKIT_MEMORY_BUDGET`` when set, else a share of the free RAM."""
    import os

    from tlkit.errors import ConfigError

    raw = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not raw:
        return int(MEMORY_SHARE * available_memory())
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = raw.upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in units else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{MEMORY_BUDGET_ENV}={raw!r}: give a size such as 512M, 8G or a number of bytes")
    return int(value * units[unit])


def fits_in_memory(n_rows: int, dim: int, n_views: int, device: Any = None) -> bool:
    """Whether the rows fit the memory budget, and half the free GPU memory when training on a GPU."""
    need = n_rows * dim * 4 * (1 + n_views)
    if need > memory_budget():
        return False
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return need <= MEMORY_SHARE * free
    return True


def whole_table_error(table: FeatureTable, head: str) -> BadInputError:
    """The one-line refusal of a head that fits on every row at once (``auto``, a sweep, k-NN, scikit-learn) when
    the training rows do not fit the memory budget: it names the heads that stream the cache instead."""
    need = len(table) * table.dim * 4 * (1 + (table.source.n_views if table.use_views else 0))
    return BadInputError(
        f"head {head!r} fits on all {len(table):,} training rows at once, and their {table.dim}-wide features "
        f"({_gib(need)}) do not fit the memory budget ({_gib(memory_budget())}); train {{param}} linear or mlp, which "
        f"stream the cache in chunks, or raise {MEMORY_BUDGET_ENV} if the machine has the memory",
        param="head",
    )


def _gib(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class FeatureTable:
    """Rows of a :class:`FeatureSource` on a device.

    :param rows: sorted row indices into the source.
    :param in_memory: load the rows as tensors (``True``), stream them from the file in chunks (``False``), or
        decide from their size and the free memory (``None``).
    :param use_views: sample one cached augmented view per item per epoch in :meth:`batches`.
    """

    def __init__(
        self,
        source: FeatureSource,
        rows: np.ndarray,
        device: torch.device,
        in_memory: bool | None = None,
        use_views: bool = False,
    ) -> None:
        import numpy as np
        import torch

        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.device = device
        self.use_views = bool(use_views)
        if self.use_views and source.views is None:
            raise BadInputError(
                f"{source.name}: no cached views; extract with --views K, or train without {{param}}", param="views"
            )
        k = source.n_views if self.use_views else 0
        auto = in_memory is None
        self.in_memory = fits_in_memory(len(self.rows), source.dim, k, device) if auto else bool(in_memory)
        self.y = torch.as_tensor(source.labels[self.rows], dtype=torch.long).to(device)
        self._x: torch.Tensor | None = None
        self._views: torch.Tensor | None = None
        if self.in_memory:
            x = self._read(source.features, self.rows)
            views_x = [self._read(_ViewRows(source.views, v), self.rows) for v in range(k)]
            check_finite(source, self.rows, [x, *views_x])
            self._x = x.to(device)
            if self.use_views:
                self._views = torch.stack(views_x).to(device)
        self._unchecked = not self.in_memory  # streamed rows are checked on the first read, not here: a head that
        # cannot stream is refused before the whole file is read (whole_table_error)

    def __len__(self) -> int:
        return len(self.rows)

    def _check_finite(self) -> None:
        """For a streamed table, refuse NaN or Inf rows (one chunked pass) before the first read uses them."""
        if self._unchecked:
            check_finite(self.source, self.rows, None, self.source.n_views if self.use_views else 0)
            self._unchecked = False

    @property
    def dim(self) -> int:
        return self.source.dim

    # -- reading -------------------------------------------------------------------------------------------------
    @staticmethod
    def _read(array: Any, rows: np.ndarray) -> torch.Tensor:
        """Rows of an HDF5 dataset or array as float32, reading contiguous spans in chunks."""
        import numpy as np
        import torch

        if len(rows) == 0:
            return torch.zeros(0, int(array.shape[-1]))
        out = np.empty((len(rows), int(array.shape[-1])), dtype=np.float32)
        step = max(1, CHUNK_BYTES // (4 * int(array.shape[-1])))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            lo, hi = int(part[0]), int(part[-1]) + 1
            out[start : start + len(part)] = np.asarray(array[lo:hi], dtype=np.float32)[part - lo]
        return torch.from_numpy(out)

    def _chunk_rows(self, batch_size: int) -> int:
        per_row = 4 * self.dim * (1 + (self.source.n_views if self.use_views else 0))
        chunk = min(CHUNK_BYTES, memory_budget())  # a streamed chunk also stays within the budget
        return max(batch_size, (chunk // per_row) // batch_size * batch_size)

    # -- iteration -----------------------------------------------------------------------------------------------
    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, augment: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` batches on the device. With a generator the order is shuffled (and, with views and
        ``augment``, one view is drawn per item); without one, rows come in order, clean."""
        import torch

        self._check_finite()
        views = self.use_views and augment
        if self.in_memory:
            n = len(self)
            order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
            pick = torch.randint(self.source.n_views, (n,), generator=generator) if views else None
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size].to(self.device)
                if pick is not None:  # item i shows view pick[i] this epoch
                    x = self._views[pick.to(self.device)[idx], idx]  # type: ignore[index]
                else:
                    x = self._x[idx]  # type: ignore[index]
                yield x, self.y[idx]
            return
        yield from self._stream(batch_size, generator, views)

    def _stream(
        self, batch_size: int, generator: torch.Generator | None, views: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Chunks of rows in shuffled order, each read as one contiguous span, shuffled within."""
        import numpy as np
        import torch

        size = self._chunk_rows(batch_size)
        starts = list(range(0, len(self.rows), size))
        if generator is not None and len(starts) > 1:  # one chunk: the same draws as the in-memory path
            starts = [starts[i] for i in torch.randperm(len(starts), generator=generator).tolist()]
        for start in starts:
            part = self.rows[start : start + size]
            lo, hi = int(part[0]), int(part[-1]) + 1
            local = part - lo
            n = len(part)
            order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
            if views and self.source.views is not None:
                pick = torch.randint(self.source.n_views, (n,), generator=generator)
                block = np.asarray(self.source.views[:, lo:hi], dtype=np.float32)[:, local]
                x_all = torch.from_numpy(block)[pick, torch.arange(n)]
            else:
                x_all = torch.from_numpy(np.asarray(self.source.features[lo:hi], dtype=np.float32)[local])
            y_all = self.y[start : start + n].cpu()
            for b in range(0, n, batch_size):
                idx = order[b : b + batch_size]
                yield x_all[idx].to(self.device, non_blocking=True), y_all[idx].to(self.device)

    def moments(self) -> Standardizer:
        """Per-dimension mean and standard deviation of the clean training features (float64 sums, chunked)."""
        import torch

        total = torch.zeros(self.dim, dtype=torch.float64)
        squares = torch.zeros(self.dim, dtype=torch.float64)
        for x, _ in self.batches(max(1, min(CHUNK_BYTES, memory_budget()) // (4 * self.dim)), augment=False):
            x = x.double().cpu()
            total += x.sum(0)
            squares += (x * x).sum(0)
        n = max(len(self), 1)
        mean = total / n
        std = (squares / n - mean * mean).clamp_min(0).sqrt()
        std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))  # constant columns stay 0
        return Standardizer(mean.float().to(self.device), std.float().to(self.device))

    def all_features(self) -> torch.Tensor:
        """Every row's clean features as one tensor on the device (k-NN and scikit-learn heads need them all)."""
        if self._x is not None:
            return self._x
        self._check_finite()
        return self._read(self.source.features, self.rows).to(self.device)


def check_finite(source: FeatureSource, rows: np.ndarray, loaded: Sequence[torch.Tensor] | None, k: int = 0) -> None:
    """Refuse features that hold NaN or Inf: a head trained on them is NaN, and its accuracy a fluke. ``loaded``
    holds the rows already read (features, then views); without it they are read in chunks (features and ``k``
    views). The error names the cache, the count, the first ids and the fix."""
    import numpy as np
    import torch

    if loaded is not None:
        bad = torch.zeros(len(rows), dtype=torch.bool)
        for x in loaded:
            bad |= ~torch.isfinite(x).all(dim=1)
    else:
        arrays = [source.features, *(_ViewRows(source.views, v) for v in range(k))]
        step = max(1, CHUNK_BYTES // (4 * source.dim))
        parts = []
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            lo, hi = int(part[0]), int(part[-1]) + 1
            block = np.zeros(len(part), dtype=bool)
            for array in arrays:
                block |= ~np.isfinite(np.asarray(array[lo:hi], dtype=np.float32)[part - lo]).all(axis=1)
            parts.append(torch.from_numpy(block))
        bad = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
    if not bool(bad.any()):
        return
    where = rows[bad.numpy()]
    names = source.ids() if source.ids is not None else None
    first = ", ".join(names[int(i)] if names is not None else f"row {int(i)}" for i in where[:3])
    raise BadInputError(
        f"{source.name}: {len(where)} row(s) of features hold NaN or Inf (first: {first}); a head trained on them "
        f"is meaningless. Find them with tlkit cache verify, then re-extract the cache (extraction now skips such "
        f"items, named)"
    )


def labelled_rows(source: FeatureSource) -> np.ndarray:
    """Rows with a label; a clear error for a cache with none."""
    import numpy as np

    rows = np.flatnonzero(np.asarray(source.labels) >= 0)
    if len(rows) == 0:
        raise BadInputError(
            f"{source.name}: the cache has no labels (every item is unlabelled); extract from class folders or a "
            f"manifest with a label column to train a head"
        )
    n_out = len(source.labels) - len(rows)
    if n_out:
        import warnings

        first = ""
        if source.ids is not None:
            first = f" (first: {source.ids()[int(np.flatnonzero(np.asarray(source.labels) < 0)[0])]!r})"
        warnings.warn(
            f"{source.name}: {n_out} of {len(source.labels)} items have no label and are left out of training{first}",
            UserWarning,
            stacklevel=2,
        )
    return rows


def split_rows(source: FeatureSource, rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified (train, val) split of ``rows``; a clear error when a class has too few items."""
    import numpy as np

    from tlkit.data.split import stratified_split

    labels = np.asarray(source.labels)[rows]
    train, val = stratified_split(labels.tolist(), fraction, seed, source.class_names)
    return rows[np.asarray(train, dtype=np.int64)], rows[np.asarray(val, dtype=np.int64)]


def class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights: ``n / (n_classes * count_c)``; absent classes get weight 0."""
    import torch

    counts = torch.bincount(y.cpu(), minlength=n_classes).double()
    present = counts > 0
    weights = torch.zeros(n_classes, dtype=torch.float64)
    weights[present] = len(y) / (int(present.sum()) * counts[present])
    return weights.float().to(y.device)


class _ViewRows:
    """View ``k`` of a ``[K, N, D]`` array as a 2-D row-sliceable object, reading only the rows asked for."""

    def __init__(self, views: Any, k: int) -> None:
        self.views, self.k = views, k
        self.shape = tuple(views.shape[1:])

    def __getitem__(self, rows: Any) -> Any:
        return self.views[self.k, rows]


@dataclass
class Standardizer:
    """``(x - mean) / std`` per feature dimension: training on standardised features converges in a few epochs
    whatever the backbone's feature scale. Folded into the head's first linear layer before saving, so the saved
    head takes raw features."""

    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def fold_into(self, linear: Any) -> None:
        """Make ``linear(raw x)`` equal ``linear_before(standardised x)``: ``W' = W / std``, ``b' = b - W' mean``."""
        import torch

        with torch.no_grad():
            linear.weight.div_(self.std.to(linear.weight.device))
            if linear.bias is not None:
                linear.bias.sub_(linear.weight @ self.mean.to(linear.weight.device))
