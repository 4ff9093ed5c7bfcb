"""How far ahead DataLoader worker processes prepare batches.

DataLoader delivers batches in order, and each worker holds at most ``prefetch_factor`` of them: a worker whose
batches are all made but not yet wanted waits, however idle its core. Small batches are made in a few
milliseconds, so that happens often; :func:`prefetch_depth` lets each worker run further ahead while the batches
held stay small (measured in ``benchmarks/streams.py``, docs/benchmarks.md, issue 18).
"""

from __future__ import annotations

#: torch's own ``prefetch_factor``: batches each worker prepares ahead, when their size is not known or is large.
DEFAULT_PREFETCH = 2
#: The most batches a worker prepares ahead.
MAX_PREFETCH = 4
#: Deeper prefetching only while all workers' prefetched batches hold at most this many bytes together.
PREFETCH_BYTES = 64 << 20


def prefetch_depth(workers: int, batch_bytes: int | None) -> int:
    """Batches each of ``workers`` DataLoader workers prepares ahead: :data:`MAX_PREFETCH` while ``workers`` times
    that many batches of ``batch_bytes`` fit in :data:`PREFETCH_BYTES`, fewer down to torch's default
    (:data:`DEFAULT_PREFETCH`), which is also the depth when the batches' size is not known (``None``)."""
    if batch_bytes is None or workers <= 0:
        return DEFAULT_PREFETCH
    fits = PREFETCH_BYTES // max(1, workers * batch_bytes)
    return max(DEFAULT_PREFETCH, min(MAX_PREFETCH, fits))


__all__ = ["DEFAULT_PREFETCH", "MAX_PREFETCH", "PREFETCH_BYTES", "prefetch_depth"]
