"""Device probes: the only place tlkit asks torch or the OS which devices and instruction sets exist.

Each probe is cached: hardware does not change while a process runs. Where the OS alone can say "no" (no GPU device
node on Linux, MPS anywhere but macOS), the probe says so without importing torch, which takes seconds: so resolving
a runtime on a machine without an accelerator (and with it an up-to-date rerun's cache key) imports no torch.
"""

from __future__ import annotations

import functools
import glob
import os
import sys

#: Device nodes through which a Linux process reaches a GPU: NVIDIA (``/dev/nvidia0``, ``/dev/nvidiactl``), NVIDIA
#: Jetson (``/dev/nvhost-*``, ``/dev/nvgpu``, ``/dev/nvmap``), AMD ROCm (``/dev/kfd``) and WSL2 (``/dev/dxg``).
#: Without any of them no CUDA (or HIP) device can be visible, whatever torch build is installed.
GPU_DEVICE_NODES = ("/dev/nvidia*", "/dev/nvhost-*", "/dev/nvgpu", "/dev/nvmap", "/dev/kfd", "/dev/dxg")


@functools.cache
def gpu_possible() -> bool:
    """Whether this process may see a CUDA/ROCm GPU. ``False`` only when that is certain without torch: on Linux with
    none of :data:`GPU_DEVICE_NODES`. Elsewhere ``True`` ("ask torch")."""
    if not sys.platform.startswith("linux"):
        return True
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_NODES)


@functools.cache
def cuda_available() -> bool:
    if not gpu_possible():
        return False  # certain without importing torch
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
    if sys.platform != "darwin":
        return False  # Metal exists on macOS only; certain without importing torch
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
