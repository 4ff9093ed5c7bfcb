"""Extraction: items in, pooled embeddings out, streamed into a crash-safe HDF5 feature cache.

:func:`extract` resolves the runtime once and plans the job (:mod:`~tlkit.extraction.plan`); the engine
(:mod:`~tlkit.extraction.engine`) reuses what is already computed and runs the loader
(:mod:`~tlkit.extraction.loader`), the forward pass (:mod:`~tlkit.extraction.forward`) and the window writer
(:mod:`~tlkit.extraction.writer`) over the rest; under ``torchrun``, :mod:`~tlkit.extraction.distributed` shards the
job over the ranks and merges their parts. :func:`embed_records` embeds items in memory, without a cache.
"""

from tlkit.extraction.api import embed_records, extract
from tlkit.extraction.engine import ExtractResult
from tlkit.extraction.plan import ExtractJob, ExtractOptions

__all__ = ["ExtractJob", "ExtractOptions", "ExtractResult", "embed_records", "extract"]
