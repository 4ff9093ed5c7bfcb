"""Where code runs: device, precision, batch size, workers and the distributed environment, resolved in one place.

``RuntimeOptions`` (raw, ``auto`` allowed) → :func:`resolve` → ``Runtime`` (frozen, resolved), from one policy
table keyed by stage and device type (:mod:`tlkit.runtime.policy`). Nothing outside this package probes CUDA, MPS
or CPU flags. Importing it does not import torch.
"""

from tlkit.runtime.policy import PRECISIONS, STAGES, option_help
from tlkit.runtime.resolution import Runtime, RuntimeOptions, resolve, resolve_device, resolve_precision

__all__ = [
    "PRECISIONS",
    "STAGES",
    "Runtime",
    "RuntimeOptions",
    "option_help",
    "resolve",
    "resolve_device",
    "resolve_precision",
]
