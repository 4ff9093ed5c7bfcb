"""The HDF5 feature cache: its public format, writing, reading, verification, export and merge.

- :mod:`~tlkit.cache.format`: names, layout and metadata of the file (``docs/cache-format.md``), the run key;
- :mod:`~tlkit.cache.storage`: h5py access, disk reservation, write errors, the writer's lock;
- :mod:`~tlkit.cache.workdir`: the work folder of an unfinished extraction (plan and segments);
- :mod:`~tlkit.cache.assemble`: rows of several files copied into one complete cache;
- :mod:`~tlkit.cache.reader`: :class:`FeatureCache` and :func:`load_features`;
- :mod:`~tlkit.cache.verify`, :mod:`~tlkit.cache.export`, :mod:`~tlkit.cache.merge`: the ``tlkit cache`` commands.

Importing the package is cheap: h5py and numpy load on first use.
"""

from tlkit.cache.export import EXPORT_FORMATS, export_cache
from tlkit.cache.format import (
    COPY_ROWS,
    FORMAT_NAME,
    FORMAT_VERSION,
    STORE_DTYPES,
    key_mismatch,
    work_dir_for,
)
from tlkit.cache.merge import merge_caches
from tlkit.cache.reader import FeatureCache, load_features
from tlkit.cache.storage import cache_lock
from tlkit.cache.verify import VerifyReport, verify_cache

__all__ = [
    "COPY_ROWS",
    "EXPORT_FORMATS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "STORE_DTYPES",
    "FeatureCache",
    "VerifyReport",
    "cache_lock",
    "export_cache",
    "key_mismatch",
    "load_features",
    "merge_caches",
    "verify_cache",
    "work_dir_for",
]
