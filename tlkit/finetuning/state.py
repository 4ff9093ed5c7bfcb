"""Training checkpoints without pickle: every tensor in one safetensors file, everything else as JSON metadata.

``RUN_DIR/checkpoints/last.safetensors`` holds, after each finished epoch:

- ``model.*``: the ``TransferModel`` state dict (backbone and head weights, BatchNorm buffers; a run with adapters
  saves only the adapters, the BatchNorm tensors of adapter blocks and the head: the frozen base is rebuilt);
- ``optim.<param index>.<key>``: optimizer state tensors (AdamW moments and step counts, SGD momentum);
- ``rng.torch``, ``rng.cuda.<i>``, ``rng.numpy``: random generator states;
- ``ema.<parameter>``: with ``--ema``, the moving average of each parameter (:mod:`tlkit.finetuning.ema`);
- metadata key ``tlkit_checkpoint``: JSON with the epoch, optimizer step, phase, best-so-far, early-stopping
  counter, the weight average's step count, the optimizer's param groups and scalar state, the gradient scaler,
  the Python RNG and an argument digest.

``best.safetensors`` holds the best model so far (``model.*`` only). Both are written with an atomic rename, so a
``kill -9`` leaves either the previous checkpoint or the new one, never a torn file, and each has a checksum
sidecar (``last.safetensors.sha256``, :mod:`tlkit.runs.checksums`) checked before it is read: a flipped byte is
refused, never resumed from. Loading uses ``safetensors`` only; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tlkit.finetuning.ema import WeightAverage

CHECKPOINT_DIR = "checkpoints"
LAST = "last.safetensors"
BEST = "best.safetensors"
META_KEY = "tlkit_checkpoint"
CHECKPOINT_VERSION = 1


def _rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import numpy as np
    import torch

    from tlkit.runtime import probe

    tensors = {"rng.torch": torch.get_rng_state()}
    if probe.cuda_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, list(py_state), gauss]}
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import numpy as np
    import torch

    from tlkit.runtime import probe

    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and len(cuda) == probe.cuda_device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "rng.numpy" in tensors and meta.get("numpy"):
        name, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if meta.get("python"):
        version, state, gauss = meta["python"]
        random.setstate((version, tuple(state), gauss))


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.*``: what the model saves (:meth:`TransferModel.run_state_dict`: with adapters, not the frozen base)."""
    run_state = getattr(model, "run_state_dict", model.state_dict)
    return {f"model.{k}": v for k, v in run_state().items()}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what :func:`model_tensors` saved (prefix removed), strictly; ``RuntimeError`` when it does not fit."""
    load = getattr(model, "load_run_state", None)
    if load is not None:
        load(state)
    else:
        model.load_state_dict(state, strict=True)


def save_training_state(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    state: dict[str, Any],
    average: WeightAverage | None = None,
) -> None:
    """Atomically write model, optimizer, scaler, RNG, the weight average (``--ema``) and the ``state`` dict
    (JSON-serialisable) to ``path``."""
    from tlkit.runs.rundir import save_tensors

    opt_tensors, opt_meta = _optimizer_parts(optimizer)
    rng_tensors, rng_meta = _rng_tensors()
    meta = {
        "version": CHECKPOINT_VERSION,
        **state,
        "optimizer": opt_meta,
        "scaler": {k: v for k, v in scaler.state_dict().items()} if scaler is not None else {},
        "rng": rng_meta,
        **({"ema_updates": average.updates} if average is not None else {}),
    }
    averaged = average.tensors() if average is not None else {}
    tensors = {**model_tensors(model), **opt_tensors, **rng_tensors, **averaged}
    save_tensors(path, tensors, metadata={META_KEY: json.dumps(meta, default=float)})


def save_model_only(path: str | os.PathLike[str], model: nn.Module, state: dict[str, Any]) -> None:
    from tlkit.runs.rundir import save_tensors

    save_tensors(path, model_tensors(model), metadata={META_KEY: json.dumps(state, default=float)})


def checkpoint_fix(path: Path) -> str:
    """What to do about a damaged checkpoint: delete it (and its checksum) and rerun."""
    return (
        f"delete {path.name} and {path.name}.sha256 in {path.parent} to restart the run from the beginning with "
        f"--resume, or write a new run to another --output"
    )


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading tensors, after checking the file's checksum (the
    complete previous version an interrupted write left is accepted: it is a consistent, earlier checkpoint)."""
    from safetensors import safe_open

    from tlkit.runs.rundir import check_file

    path = Path(path)
    fix = checkpoint_fix(path)
    check_file(path, fix, accept_previous=True)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except Exception as exc:
        raise BadInputError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc}); {fix}") from exc
    if raw is None:
        raise BadInputError(f"{path}: not a tlkit checkpoint (no {META_KEY} metadata); {fix}")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise BadInputError(f"{path}: the checkpoint's metadata is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(meta, dict):
        raise BadInputError(f"{path}: the checkpoint's metadata is not a JSON object; {fix}")
    return meta


def load_model_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``model.*`` tensors of a checkpoint, with the prefix removed (a ``TransferModel`` state dict)."""
    from tlkit.runs.rundir import load_tensors

    path = Path(path)
    tensors = load_tensors(path, checkpoint_fix(path), accept_previous=True)
    return {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}


def load_training_state(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    """Restore model, optimizer, scaler, RNG and the weight average (``--ema``) from ``path``; return the saved
    ``state`` dict."""
    from tlkit.runs.rundir import load_tensors

    path = Path(path)
    meta = read_meta(path)  # checks the checksum
    tensors = load_tensors(path, checkpoint_fix(path), verify=False)
    try:
        load_model_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as exc:
        raise BadInputError(
            f"{path}: the checkpoint's weights do not fit this model ({str(exc).splitlines()[0]}); "
            f"{checkpoint_fix(path)}"
        ) from exc
    saved_groups = [g.get("name") for g in meta["optimizer"]["param_groups"]]
    current = [g.get("name") for g in optimizer.param_groups]
    if saved_groups != current:
        raise BadInputError(
            f"{path}: the checkpoint's parameter groups ({len(saved_groups)}) do not match this model's "
            f"({len(current)}); it was written by a different model or tlkit version"
        )
    optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    _restore_rng(tensors, meta.get("rng", {}))
    if average is not None:
        average.restore(tensors, int(meta.get("ema_updates", 0)), str(path), f"; {checkpoint_fix(path)}")
    return meta
