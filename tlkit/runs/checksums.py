"""Checksums of the weights and state files of a run: written beside each file, checked before it is read.

Every weights or state file (``head.safetensors``, ``head.skops``, ``model.safetensors``, the fine-tuning
checkpoints) gets a sidecar ``NAME.sha256``: a small JSON object with the file's SHA-256, its size and the digest
of the version it replaced. The order of a write makes a crash detectable for what it is:

1. the new content goes to a temporary file and is hashed;
2. the sidecar is replaced atomically (new digest, and the previous one);
3. the temporary file is renamed over ``NAME``.

A ``kill -9`` before 2 leaves the old file and its old sidecar; between 2 and 3, the old file, whose digest is the
sidecar's ``previous``: an *incomplete* write, not damage. A file that matches neither digest is *damaged* (a
flipped byte, a truncated copy) and is refused before anything parses it.

JSON files (``config.json``, ``report.json``, ``metrics.jsonl``) carry no checksum: they are checked by their
readers (format, version, the head allow-list) and stay editable by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tlkit.errors import BadInputError

SUFFIX = ".sha256"
FORMAT = "tlkit-checksum"

Status = Literal["current", "previous"]


def sidecar(path: str | os.PathLike[str]) -> Path:
    """The checksum file of ``path``: ``NAME.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(path: Path) -> dict[str, Any] | None:
    """The sidecar's record, or ``None`` when there is none or it cannot be read."""
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def write_checked(path: str | os.PathLike[str], writer: Callable[[str], object]) -> None:
    """Let ``writer(tmp_path)`` write ``path``'s new content; record its digest, then move it into place.

    Both steps are atomic (:mod:`tlkit.fileio`), and the sidecar is written first, so that an interrupted write
    leaves a file whose digest is the sidecar's ``previous`` (see the module's description).
    """
    from tlkit.fileio import atomic_write, atomic_write_with

    path = Path(path)
    old = _recorded(path) if path.exists() else None

    def write(tmp: str) -> None:
        writer(tmp)
        record = {
            "format": FORMAT,
            "file": path.name,
            "sha256": sha256_file(tmp),
            "size": os.path.getsize(tmp),
            "previous": old.get("sha256") if old else None,
        }
        with atomic_write(sidecar(path), "w") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")

    atomic_write_with(path, write)


def verify(path: str | os.PathLike[str], fix: str) -> Status:
    """Check ``path`` against its sidecar before anything reads it.

    Returns ``"current"`` when the file is the one last written, ``"previous"`` when it is the complete earlier
    version (a write was interrupted after its sidecar was updated). Raises :class:`BadInputError`, one line that
    names the file and ``fix``, when the sidecar is missing or the file matches neither digest.
    """
    path = Path(path)
    record = _recorded(path)
    if record is None:
        raise BadInputError(
            f"{path}: no checksum ({sidecar(path).name} is missing or unreadable), so its integrity cannot be "
            f"checked; {fix}"
        )
    digest = sha256_file(path)
    if digest == record.get("sha256"):
        return "current"
    if record.get("previous") and digest == record.get("previous"):
        return "previous"
    size = path.stat().st_size
    expected = record.get("size")
    what = f"{size} bytes, {expected} expected" if size != expected else "same size, different content"
    raise BadInputError(
        f"{path}: damaged: its SHA-256 does not match the one recorded when it was written ({what}); {fix}"
    )


def remove(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` and its sidecar."""
    Path(path).unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


__all__ = ["SUFFIX", "remove", "sha256_file", "sidecar", "verify", "write_checked"]
