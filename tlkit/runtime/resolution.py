"""One resolution point: raw runtime options (``auto`` allowed) become a frozen :class:`Runtime` per stage.

The CLI and the Python API build a :class:`RuntimeOptions` from what the user passed; the engines receive the
:class:`Runtime` that :func:`resolve` makes of it and never see ``auto``. This module (with
:mod:`tlkit.runtime.probe`) is the only code that asks torch which devices exist; the policy is data in
:mod:`tlkit.runtime.policy`.

Resolving imports torch only when torch must answer (a GPU device node exists, macOS, a device type tlkit does not
know): the resolved device is a name (``cpu``, ``cuda:0``), and :attr:`Runtime.device` makes the ``torch.device`` the
first time the forward pass asks for it. So a command that only compares a cache key (an up-to-date rerun) on a
machine without an accelerator never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError
from tlkit.runtime import probe
from tlkit.runtime.distributed import DistEnv, dist_env
from tlkit.runtime.policy import AUTO_PRECISION, HEAD_PRECISION, PRECISIONS, stage_policy

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RuntimeOptions:
    """Runtime choices as the user gave them: ``"auto"`` or an explicit value for each."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | str = "auto"
    workers: int | str = "auto"

    @classmethod
    def of(
        cls,
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int | str | None = "auto",
        workers: int | str | None = "auto",
    ) -> RuntimeOptions:
        """Options from keyword arguments where ``None`` means ``auto`` (the API's and the CLI's defaults)."""
        return cls(
            device="auto" if device in (None, "") else str(device),
            precision="auto" if precision in (None, "") else str(precision),
            batch_size="auto" if batch_size is None else batch_size,
            workers="auto" if workers is None else workers,
        )


@dataclass(frozen=True)
class Runtime:
    """Where and how a stage computes, fully resolved: nothing here is ``auto``.

    ``device_name`` is the resolved device as torch writes it (``cpu``, ``cuda``, ``cuda:1``, ``mps``);
    :attr:`device` is the ``torch.device``, made (and torch imported) when first asked for. ``batch_size`` is
    ``None`` for stages whose batch is a training hyperparameter (fine-tuning); ``auto_batch`` says whether the
    batch may halve on out-of-memory. ``rank``/``world_size`` describe the torchrun job (0 and 1 when there is
    none).
    """

    stage: str
    device_name: str
    precision: str
    batch_size: int | None
    auto_batch: bool
    workers: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    auto_workers: bool = False  # ``workers`` is a cap: the loader picks the count by measurement (measured_workers)

    @functools.cached_property
    def device(self) -> torch.device:
        """The ``torch.device`` (imports torch: the forward pass asks, a cache-key comparison does not)."""
        import torch

        return torch.device(self.device_name)

    @property
    def device_type(self) -> str:
        return device_type_of(self.device_name)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches, for asynchronous copies to a CUDA device."""
        return self.device_type == "cuda"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for fp32 (no autocast)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for this runtime's precision (a no-op for fp32)."""
        import torch

        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.precision == "fp16")

    def to_dict(self) -> dict[str, Any]:
        """JSON for run records and cache metadata."""
        return {
            "stage": self.stage, "device": self.device_name, "precision": self.precision,
            "batch_size": self.batch_size, "auto_batch": self.auto_batch, "workers": self.workers,
            "rank": self.rank, "world_size": self.world_size,
        }  # fmt: skip


def resolve(stage: str, options: RuntimeOptions | None = None, *, env: DistEnv | None | bool = True) -> Runtime:
    """Resolve ``options`` for ``stage`` (``extract``, ``train``, ``finetune`` or ``predict``).

    ``env``: the torchrun environment; ``True`` (the default) reads it from the launcher's variables, ``None`` or
    ``False`` resolves for a single process. Under torchrun, ``auto``/``cuda`` become this rank's
    ``cuda:LOCAL_RANK``, and ``auto`` workers share the node's cores between its ranks.
    """
    options = options or RuntimeOptions()
    denv = dist_env() if env is True else (env or None)
    device = _device_name(options.device, denv)
    policy = stage_policy(stage, device_type_of(device))
    precision = HEAD_PRECISION if stage == "train" else resolve_precision(options.precision, device)
    batch, auto_batch = _batch_size(options.batch_size, policy.batch_size, policy.backoff)
    workers = _workers(options.workers, policy.workers_cap, denv.local_world_size if denv else 1)
    auto_workers = options.workers in (None, "auto")
    if denv is None:
        return Runtime(stage, device, precision, batch, auto_batch, workers, auto_workers=auto_workers)
    return Runtime(
        stage, device, precision, batch, auto_batch, workers,
        denv.rank, denv.world_size, denv.local_rank, denv.local_world_size, auto_workers,
    )  # fmt: skip


#: ``--workers auto`` starts no worker process when reading and preprocessing a batch costs less than this share of
#: the main process's time per batch: a worker would cost more (start-up, copies through shared memory) than it hides.
MIN_WORKER_SHARE = 0.05
#: ``--workers auto`` puts a worker on the main process's core too when the main process would be busy less than this
#: share of the time (``docs/benchmarks.md``, "Large datasets": reading shards with a near-free forward pass).
IDLE_MAIN_SHARE = 0.25


def measured_workers(runtime: Runtime, prepare_s: float, step_s: float, cores: int | None = None) -> int:
    """DataLoader workers for ``--workers auto``, from a measurement of the first batches in the main process:
    ``prepare_s`` is the time one process takes to read, decode and preprocess a batch, ``step_s`` the time the main
    process then spends on it (transfer, forward pass, hand-off to the writer).

    None when preparing costs under :data:`MIN_WORKER_SHARE` of a step; else as many as prepare one batch per step
    (``ceil(prepare / step)``), plus one on an accelerator for uneven items, and never more than the cap
    :func:`resolve` set (the cores less one, at most the policy's cap). On the CPU the main process's core gets a
    worker too when, with a worker on every core, the main process would still be busy less than
    :data:`IDLE_MAIN_SHARE` of the time (a cheap forward pass: reading is the whole job). ``cores``: this process's
    cores (default: asked of the OS). An explicit ``workers`` is kept as given."""
    if not runtime.auto_workers or runtime.workers == 0:
        return runtime.workers
    if prepare_s <= MIN_WORKER_SHARE * step_s:
        return 0
    need = math.ceil(prepare_s / max(step_s, 1e-9)) + (0 if runtime.device_type == "cpu" else 1)
    workers = max(1, min(runtime.workers, need))
    cores = (probe.cpu_count() if cores is None else cores) // max(runtime.local_world_size, 1)
    every_core = workers + 1
    if (
        runtime.device_type == "cpu"
        and need > workers
        and workers == cores - 1
        and every_core <= stage_policy(runtime.stage, runtime.device_type).workers_cap
        and step_s * every_core <= IDLE_MAIN_SHARE * prepare_s
    ):
        return every_core
    return workers


def resolve_device(device: str | None, env: DistEnv | None = None) -> torch.device:
    """``auto``: CUDA, then Apple MPS, then the CPU. Under torchrun, CUDA means this rank's ``cuda:LOCAL_RANK``.
    (:func:`resolve` keeps the name and makes the ``torch.device`` only when it is used.)"""
    import torch

    return torch.device(_device_name(device, env))


#: Device names resolved without torch; any other name is checked by ``torch.device`` (which imports torch).
_KNOWN_DEVICE = re.compile(r"(cpu|cuda|mps)(?::([0-9]+))?")


def _device_name(device: str | None, env: DistEnv | None) -> str:
    """The one device resolution: ``device`` as a checked name (``cpu``, ``cuda:1``), asking torch only when the OS
    cannot answer (:mod:`tlkit.runtime.probe`)."""
    spec = (device or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if probe.cuda_available() else "mps" if probe.mps_available() else "cpu"
    known = _KNOWN_DEVICE.fullmatch(spec)
    if known is not None:
        kind, index = known.group(1), None if known.group(2) is None else int(known.group(2))
    else:
        import torch

        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise ConfigError(
                f"{{param}} {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps", param="device"
            ) from None
        kind, index = dev.type, dev.index
    if kind == "cuda":
        if not probe.cuda_available():
            raise ConfigError(f"{{param}} {device}: CUDA is not available here; use cpu or auto", param="device")
        n = probe.cuda_device_count()
        if env is not None and index is None:
            if env.local_rank >= n:
                raise ConfigError(
                    f"local rank {env.local_rank} has no GPU (this node has {n}); start at most {n} processes per "
                    f"node (torchrun --nproc-per-node {n})"
                )
            index = env.local_rank
        if index is not None and index >= n:
            raise ConfigError(f"{{param}} {device}: only {n} CUDA device(s) visible", param="device")
        if index is not None:
            import torch

            torch.cuda.set_device(torch.device("cuda", index))
    elif kind == "mps" and not probe.mps_available():
        raise ConfigError(f"{{param}} {device}: Apple MPS is not available here; use cpu or auto", param="device")
    return kind if index is None else f"{kind}:{index}"


def device_type_of(device: str | torch.device) -> str:
    """The type of a device or device name: ``cuda`` for ``cuda:1`` (without importing torch for a name)."""
    return device.partition(":")[0] if isinstance(device, str) else str(device.type)


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """``auto`` per :data:`tlkit.runtime.policy.AUTO_PRECISION`; an explicit choice is checked against the device
    (a ``torch.device`` or a resolved device name)."""
    kind = device_type_of(device)
    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        raise ConfigError(f"{{param}} must be one of {', '.join(PRECISIONS)}, not {precision!r}", param="precision")
    rule = AUTO_PRECISION.get(kind, "bf16-native")
    if p == "auto":
        if rule == "bf16-or-fp16":
            return "bf16" if probe.cuda_bf16_supported() else "fp16"
        if rule == "bf16-native":
            return "bf16" if probe.cpu_has_native_bf16() else "fp32"
        return rule
    if p == "bf16" and kind == "cuda" and not probe.cuda_bf16_supported():
        raise ConfigError("{param} bf16: this GPU has no bf16 support; use fp16 or auto", param="precision")
    return p


def _batch_size(value: int | str | None, auto_start: int | None, backoff: bool) -> tuple[int | None, bool]:
    if value in (None, "auto"):
        return auto_start, backoff and auto_start is not None
    return _count(value, "batch_size", minimum=1), False


def _workers(value: int | str | None, cap: int, ranks_on_node: int) -> int:
    if value in (None, "auto"):
        # One core stays with each rank's main process; a node's cores are shared between its ranks.
        return min(cap, max(probe.cpu_count() // max(ranks_on_node, 1) - 1, 0))
    return _count(value, "workers", minimum=0)


def _count(value: int | str | None, param: str, minimum: int) -> int:
    """An explicit integer option: ``auto`` or an integer of at least ``minimum``."""
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{{param}} must be auto or {kind}, not {value!r}", param=param) from None
    if n < minimum:
        raise ConfigError(f"{{param}} must be auto or {kind}, not {n}", param=param)
    return n


__all__ = [
    "MIN_WORKER_SHARE",
    "Runtime",
    "RuntimeOptions",
    "device_type_of",
    "measured_workers",
    "resolve",
    "resolve_device",
    "resolve_precision",
]
