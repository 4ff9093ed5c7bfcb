"""Device probes: the only place tlkit asks torch or the OS which devices and instruction sets exist.

Each probe is cached: hardware does not change while a process runs.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def cuda_device_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if cuda_available() else 0


@functools.cache
def cuda_bf16_supported() -> bool:
    import torch

    return cuda_available() and bool(torch.cuda.is_bf16_supported())


@functools.cache
def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@functools.cache
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


def cpu_count() -> int:
    """Cores this process may use (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
