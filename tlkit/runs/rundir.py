"""The run directory shared by ``tlkit train`` and ``tlkit finetune``: its layout, config, weights and metrics.

Layout::

    RUN_DIR/
      config.json        everything needed to rebuild: kind, backbone (name, weights, options, fingerprint),
                         head (name, kind, params, in_dim, n_classes), class_names, layer, training arguments
      head.safetensors   the head's weights (kind "head", torch heads)
      model.safetensors  backbone + head weights, keys "backbone.*" and "head.*" (kind "finetune")
      *.sha256           a checksum beside each weights file (:mod:`tlkit.runs.checksums`), checked on load
      metrics.jsonl      one JSON object per epoch
      report.json        accuracy, balanced accuracy, macro-F1, per-class report, confusion matrix
      curves.png, confusion.png
      .lock              only while a writer runs (:func:`run_lock`)

Every file is written atomically (temporary file, fsync, rename: :mod:`tlkit.fileio`), so a crash never leaves a
half-written file under its final name.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError
from tlkit.fileio import atomic_write, writer_lock

if TYPE_CHECKING:
    import torch

RUN_FORMAT = "tlkit-run"
RUN_FORMAT_VERSION = 1
CONFIG = "config.json"
HEAD_WEIGHTS = "head.safetensors"
MODEL_WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
REPORT = "report.json"
#: The lock file a writer of the run directory holds (``tlkit train``, ``tlkit finetune``).
LOCK = ".lock"
#: What to do about a damaged weights file, unless the caller knows better.
DAMAGED_FIX = "copy the run directory again, or rerun the training that wrote it"


def run_lock(run_dir: str | os.PathLike[str]) -> AbstractContextManager[None]:
    """Hold ``RUN_DIR/.lock`` while in the ``with`` block; a second writer gets a clear :class:`ConfigError`.

    The lock is an OS file lock (``flock``), so the kernel drops it when the holder dies, even by ``kill -9``.
    The lock creates ``RUN_DIR`` when it is missing; a clean release deletes the lock file, and ``RUN_DIR`` too when
    the run wrote nothing into it (a run that failed at the start leaves no empty folder).
    """
    return writer_lock(Path(run_dir) / LOCK, run_dir, noun="run directory", error=ConfigError)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")


def save_tensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically save tensors as safetensors (contiguous CPU copies; shared storage is cloned), with a checksum
    sidecar (:mod:`tlkit.runs.checksums`)."""
    from safetensors.torch import save_file

    from tlkit.runs.checksums import write_checked

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_checked(path, lambda tmp: save_file(flat, tmp, metadata=dict(metadata or {})))


def _existing(path: str | os.PathLike[str], fix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: weights file missing; is this a complete tlkit run directory? {fix}")
    return path


def check_file(path: str | os.PathLike[str], fix: str, accept_previous: bool = False) -> Path:
    """``path``, after checking that it exists and matches its recorded checksum; one-line errors naming ``fix``.

    ``accept_previous``: take the complete earlier version a write left when it was interrupted (a checkpoint);
    otherwise that is an "incomplete" error.
    """
    from tlkit.runs.checksums import verify

    path = _existing(path, fix)
    if verify(path, fix) == "previous" and not accept_previous:
        raise BadInputError(
            f"{path}: incomplete: tlkit was interrupted while replacing it (it is the version before the last "
            f"write); {fix}"
        )
    return path


def load_tensors(
    path: str | os.PathLike[str], fix: str = DAMAGED_FIX, *, verify: bool = True, accept_previous: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of a run, after its checksum (``verify``); a file that is not
    safetensors (truncated, pickled, garbage) is a one-line :class:`BadInputError`, never a traceback."""
    from safetensors.torch import load_file

    path = check_file(path, fix, accept_previous) if verify else _existing(path, fix)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types (SafetensorError, OSError)
        first = (str(exc).splitlines() or [""])[0]
        raise BadInputError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {first}); {fix}") from exc


def new_config(kind: str, **fields: Any) -> dict[str, Any]:
    """A run config with the format header filled in."""
    from tlkit import __version__

    return {
        "format": RUN_FORMAT,
        "version": RUN_FORMAT_VERSION,
        "kind": kind,
        "tlkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``RUN_DIR/config.json``."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if run_dir.is_file():  # every command that reads a run reads its config first: one rule, one message
        raise BadInputError(
            f"{run_dir} is a file, not a run directory; give the -o folder of tlkit train or tlkit finetune"
        )
    if not path.is_file():
        raise BadInputError(f"{run_dir}: not a tlkit run directory (no {CONFIG}); pass the -o folder of train/finetune")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc}); the run directory is damaged") from exc
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        raise BadInputError(f"{path}: not a tlkit run config")
    if int(config.get("version", 0)) > RUN_FORMAT_VERSION:
        raise BadInputError(f"{path}: run format {config.get('version')} is newer than this tlkit; upgrade tlkit")
    return config


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON line and fsync (metrics survive a crash up to the last finished epoch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(dict(record), default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash: everything before it is good
    return rows


def rewrite_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Atomically replace a JSONL file (used on resume to drop epochs after the checkpoint)."""
    with atomic_write(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(dict(row), default=float) + "\n")
