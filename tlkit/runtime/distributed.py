"""torch.distributed plumbing shared by sharded extraction and DDP fine-tuning.

tlkit runs on PyTorch's own engine: ``torchrun`` (or any launcher that sets the ``env://`` variables ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts the processes, and this module joins them into one
process group. The backend is NCCL when the processes train on CUDA devices and gloo otherwise; extraction only
meets at barriers and exchanges small Python objects, so it always uses gloo (no NCCL communicator, no GPU memory).

Nothing here imports torch at module level: ``tlkit --help`` imports the command modules, which import this one.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Set to 0 to ignore torchrun's variables and run every process on its own.
ENV_SWITCH = "TLKIT_DISTRIBUTED"
#: Seconds a collective (a barrier, most often) may wait for the slowest rank before failing.
ENV_TIMEOUT = "TLKIT_DIST_TIMEOUT"
#: Extraction ranks wait at a barrier for the slowest shard, which can take hours on a big dataset.
EXTRACT_TIMEOUT_S = 24 * 3600
#: Fine-tuning ranks meet every step; a rank that hangs this long is a real failure.
TRAIN_TIMEOUT_S = 30 * 60
_REQUIRED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global ``rank`` of ``world_size``, and ``local_rank`` of ``local_world_size`` on
    its node (torchrun's ``LOCAL_RANK``/``LOCAL_WORLD_SIZE``)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv | None:
    """The launcher's view of this process, or ``None`` when it was not started as one of several ranks."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not all(os.environ.get(k) for k in _REQUIRED):
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError as exc:
        raise ConfigError(f"torchrun variables are not integers ({exc}); launch with torchrun") from None
    if world <= 1:
        return None  # one process: the ordinary single-process path, without a process group
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    return DistEnv(rank, world, local_rank, max(local_world, 1))


def timeout_seconds(default: float) -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_TIMEOUT}={raw!r}: give the timeout in seconds") from None
    if value <= 0:
        raise ConfigError(f"{ENV_TIMEOUT}={raw!r}: the timeout must be positive")
    return value


def backend_for(device: torch.device | str | None) -> str:
    """NCCL for CUDA devices (when this build has it), gloo for everything else."""
    import torch.distributed as dist

    kind = str(device or "cpu").split(":")[0].strip().lower()  # "auto" resolves to cuda:LOCAL_RANK when there is CUDA
    return "nccl" if kind == "cuda" and dist.is_nccl_available() else "gloo"


@contextlib.contextmanager
def process_group(backend: str, timeout_s: float) -> Iterator[DistEnv]:
    """Join the launcher's process group for the duration (a no-op wrapper if one is already initialised)."""
    import torch.distributed as dist

    env = dist_env()
    if env is None:
        raise ConfigError("not started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not all set)")
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; install a standard torch wheel")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield env
    finally:
        if owned and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


# -- collectives (no-ops without a process group, so callers need no branches) ---------------------------------
def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    import torch.distributed as dist

    if _active():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable, small), in rank order, on every rank. Only ever used between the ranks of
    one job: nothing is unpickled from a file."""
    import torch.distributed as dist

    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    import torch.distributed as dist

    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sums over ranks of a few numbers (float64)."""
    return _all_reduce(values, device, "SUM")


def all_reduce_max(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise maxima over ranks of a few numbers (float64)."""
    return _all_reduce(values, device, "MAX")


def _all_reduce(values: list[float], device: torch.device | str, op: str) -> list[float]:
    import torch
    import torch.distributed as dist

    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    result: list[float] = t.tolist()
    return result


def bits_sum(t: torch.Tensor) -> torch.Tensor:
    """An exact checksum of a tensor's bits (NaN-safe, unlike comparing values): equal tensors, equal sums."""
    import torch

    flat = t.detach().contiguous().flatten()
    view = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[flat.element_size()]
    return flat.view(view).to(torch.int64).sum()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    return all_reduce_max([1.0 if flag else 0.0], device)[0] > 0


@contextlib.contextmanager
def errors_on_main_only() -> Iterator[None]:
    """For CLI commands under torchrun: every rank learns of a failure, but only rank 0 prints it (the others
    exit with status 1 silently), so a message is not repeated once per process."""
    from tlkit.errors import TlkitError

    env = dist_env()
    try:
        yield
    except TlkitError:
        if env is not None and not env.is_main:
            raise SystemExit(1) from None
        raise
