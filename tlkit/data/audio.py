"""The audio reader: class folders, flat folders and manifests of WAV, FLAC and Ogg files, decoded with soundfile.

Items are :class:`AudioClip` objects (mono float32 waveform plus its sample rate). Backbones resample them to the
model's own rate with :func:`resample` (scipy polyphase filtering; no torchaudio).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

from tlkit.data.base import Reader, Record
from tlkit.data.listing import os_error_reason
from tlkit.data.urls import read_item
from tlkit.errors import BadItemError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga")


@dataclass
class AudioClip:
    """A raw audio item: a mono float32 waveform (a 1-D numpy array, nominally in [-1, 1]) and its sample rate."""

    waveform: Any
    sample_rate: int

    @property
    def n_samples(self) -> int:
        return int(len(self.waveform))

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.n_samples / float(self.sample_rate)


class AudioReader(Reader):
    name = "audio"
    modality = "audio"
    extensions = AUDIO_EXTENSIONS

    def _length(self, p: Path) -> int | None:
        # Frames from the header only (cheap), for length bucketing; a corrupt file fails later in load().
        try:
            import soundfile

            return int(soundfile.info(str(p)).frames)
        except Exception:
            return None

    def load(self, record: Record) -> AudioClip:
        return decode_audio(read_item(record.source, record.id), record.id)  # a URL's bytes, or the path


def decode_audio(path: str | Path | bytes, item_id: str | None = None) -> AudioClip:
    """Decode ``path`` (or the encoded bytes of a tar member or a table cell) to a mono float32 :class:`AudioClip` at
    the file's own rate.

    Multi-channel audio is mixed down by averaging the channels. Raises :class:`BadItemError` for a missing,
    unreadable, corrupt or empty file, or one with non-finite samples.
    """
    import io

    import numpy as np
    import soundfile

    item_id = item_id or ("audio bytes" if isinstance(path, bytes) else str(path))
    source: Any
    if isinstance(path, bytes):
        empty, source = not path, io.BytesIO(path)
    else:
        path = Path(path)
        try:
            with open(path, "rb") as fh:  # the file system's errors first (they are retried on every run)
                empty = not fh.read(1)
        except IsADirectoryError as exc:
            raise BadItemError(item_id, "a directory, not an audio file") from exc
        except OSError as exc:
            raise BadItemError(item_id, os_error_reason(exc)) from exc
        source = str(path)
    if empty:
        raise BadItemError(item_id, "empty file (0 bytes)")
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        raise BadItemError(item_id, f"not a readable audio file, or corrupt ({exc})") from exc
    if data.shape[0] == 0:
        raise BadItemError(item_id, "empty audio (0 samples)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise BadItemError(item_id, "audio has NaN or infinite samples")
    return AudioClip(np.ascontiguousarray(mono, dtype=np.float32), int(rate))


def to_mono(waveform: Any) -> Any:
    """A float32 1-D array from a 1-D array, or from a 2-D ``[frames, channels]`` array (channels averaged)."""
    import numpy as np

    arr = np.asarray(waveform, dtype=np.float32)
    if arr.ndim == 2:
        # soundfile gives [frames, channels]; accept [channels, frames] when channels are clearly the short axis
        arr = arr.mean(axis=1 if arr.shape[0] >= arr.shape[1] else 0, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected a mono or [frames, channels] waveform, got shape {arr.shape}")
    return arr


def resample(waveform: Any, orig_rate: int, target_rate: int) -> Any:
    """Resample a 1-D float waveform from ``orig_rate`` to ``target_rate`` Hz (polyphase, anti-aliased).

    The output has ``ceil(len * target / orig)`` samples. Equal rates return the input unchanged.
    """
    import numpy as np

    orig_rate, target_rate = int(orig_rate), int(target_rate)
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    arr = np.asarray(waveform, dtype=np.float32)
    if orig_rate == target_rate or arr.size == 0:
        return arr
    from scipy.signal import resample_poly

    g = gcd(orig_rate, target_rate)
    out = resample_poly(arr.astype(np.float64), target_rate // g, orig_rate // g)
    return out.astype(np.float32)
