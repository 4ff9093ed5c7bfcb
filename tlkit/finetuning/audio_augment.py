"""Training augmentation for raw audio: a random crop, a random gain and background noise.

These act on the waveform before the backbone's own preprocessing, so they suit every audio backbone. Randomness
comes from ``numpy.random``, which DataLoader workers and the fine-tuning engine seed per epoch.
"""

from __future__ import annotations

from typing import Any

CROP_KEEP = (0.8, 1.0)  # fraction of the clip kept by the random crop
GAIN_DB = (-6.0, 6.0)
SNR_DB = (15.0, 40.0)


def augment_clip(clip: Any, max_seconds: float | None = None) -> Any:
    """A new :class:`tlkit.data.audio.AudioClip`: randomly cropped (to ``max_seconds`` when longer, else to 80–100 %
    of its length), scaled by ±6 dB and mixed with white noise at 15–40 dB SNR."""
    import numpy as np

    from tlkit.data.audio import AudioClip

    wave = np.asarray(clip.waveform, dtype=np.float32)
    rate = int(clip.sample_rate)
    n = len(wave)
    if n > 1:
        keep = int(n * np.random.uniform(*CROP_KEEP))
        if max_seconds:
            keep = min(keep, int(max_seconds * rate)) if n > max_seconds * rate else keep
        keep = max(1, keep)
        start = np.random.randint(0, n - keep + 1)
        wave = wave[start : start + keep]
    wave = wave * np.float32(10 ** (np.random.uniform(*GAIN_DB) / 20))
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) if len(wave) else 0.0
    if rms > 0:
        noise_rms = rms / 10 ** (np.random.uniform(*SNR_DB) / 20)
        wave = wave + np.random.standard_normal(len(wave)).astype(np.float32) * np.float32(noise_rms)
    return AudioClip(np.clip(wave, -1.0, 1.0).astype(np.float32), rate)
