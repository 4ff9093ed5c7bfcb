"""The audio reader: real WAV/FLAC/Ogg files written by the test at several rates, stereo, silence, very short and
long clips, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tlkit import open_dataset
from tlkit.data import load_or_skip
from tlkit.data.audio import AudioClip, AudioReader, decode_audio, resample, to_mono
from tlkit.errors import BadInputError, BadItemError


def sine(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    mono = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels == 1:
        return mono
    return np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)  # channels differ in level


@pytest.fixture
def audio_folder(tmp_path) -> Path:
    root = tmp_path / "clips"
    (root / "speech").mkdir(parents=True)
    (root / "music").mkdir()
    sf.write(root / "speech" / "narrow_8k.wav", sine(1.0, 8000), 8000, subtype="PCM_16")
    sf.write(root / "speech" / "cd_22k.flac", sine(0.5, 22050, 300), 22050)
    sf.write(root / "speech" / "short_0.1s.wav", sine(0.1, 16000), 16000)
    sf.write(root / "music" / "studio_48k.ogg", sine(0.8, 48000, 523), 48000, format="OGG", subtype="VORBIS")
    sf.write(root / "music" / "stereo.wav", sine(0.5, 16000, channels=2), 16000, subtype="FLOAT")
    sf.write(root / "music" / "silence.wav", np.zeros(16000, np.float32), 16000)
    sf.write(root / "music" / "long_60s.flac", sine(60.0, 16000, 200), 16000)
    (root / "music" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not audio")
    (root / "music" / "empty.flac").write_bytes(b"")
    sf.write(root / "music" / "no_frames.wav", np.zeros(0, np.float32), 16000)
    (root / "music" / "notes.txt").write_text("not audio, not picked up")
    return root


def test_scan_finds_classes_and_lengths_without_decoding(audio_folder):
    ds = open_dataset(audio_folder, modality="audio")
    assert ds.reader == "audio" and ds.class_names == ["music", "speech"]
    by_id = {r.id: r for r in ds.records}
    assert "music/notes.txt" not in by_id and len(by_id) == 10
    assert by_id["speech/narrow_8k.wav"].length == 8000
    assert by_id["speech/cd_22k.flac"].length == 11025
    assert by_id["music/studio_48k.ogg"].length == 38400
    assert by_id["music/long_60s.flac"].length == 960000
    assert by_id["music/corrupt.wav"].length is None  # unreadable header: found now, reported at load
    assert by_id["speech/short_0.1s.wav"].label == ds.class_names.index("speech")


def test_load_decodes_every_good_file_as_mono_float32(audio_folder):
    ds = open_dataset(audio_folder, modality="audio")
    reader = AudioReader()
    rates = {}
    for r in ds.records:
        clip, reason = load_or_skip(reader, r)
        if clip is None:
            continue
        assert isinstance(clip, AudioClip) and clip.waveform.dtype == np.float32 and clip.waveform.ndim == 1
        assert clip.n_samples == r.length
        rates[r.id] = clip.sample_rate
    assert rates["speech/narrow_8k.wav"] == 8000 and rates["speech/cd_22k.flac"] == 22050
    assert rates["music/studio_48k.ogg"] == 48000
    long_clip = decode_audio(audio_folder / "music" / "long_60s.flac")
    assert long_clip.duration == pytest.approx(60.0)
    short = decode_audio(audio_folder / "speech" / "short_0.1s.wav")
    assert short.duration == pytest.approx(0.1)
    silence = decode_audio(audio_folder / "music" / "silence.wav")
    assert silence.n_samples == 16000 and not silence.waveform.any()


def test_stereo_is_mixed_down_to_the_channel_mean(audio_folder):
    clip = decode_audio(audio_folder / "music" / "stereo.wav")
    both = sine(0.5, 16000, channels=2)
    np.testing.assert_allclose(clip.waveform, both.mean(axis=1), atol=1e-6)
    assert to_mono(both).shape == (8000,) and to_mono(both.T).shape == (8000,)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("corrupt.wav", "not a readable audio file"), ("empty.flac", "empty file"),
     ("no_frames.wav", "empty audio"), ("missing.wav", "file not found")],
)  # fmt: skip
def test_broken_files_are_bad_items_that_get_skipped(audio_folder, name, reason):
    ds = open_dataset(audio_folder, modality="audio")
    reader = AudioReader()
    record = next((r for r in ds.records if r.id == f"music/{name}"), None)
    if record is None:
        record = type(ds.records[0])(f"music/{name}", str(audio_folder / "music" / name))
    with pytest.raises(BadItemError, match=reason) as info:
        reader.load(record)
    assert info.value.item_id == f"music/{name}"
    item, why = load_or_skip(reader, record)
    assert item is None and reason in why


def test_manifest_csv(audio_folder, tmp_path):
    manifest = audio_folder / "manifest.csv"
    manifest.write_text("path,label\nspeech/narrow_8k.wav,yes\nmusic/silence.wav,no\n,no\n")
    ds = open_dataset(manifest, modality="audio")
    assert ds.class_names == ["no", "yes"] and [r.id for r in ds.records] == [
        "speech/narrow_8k.wav",
        "music/silence.wav",
    ]
    assert [s.reason for s in ds.skipped] == ["empty path"]
    assert AudioReader().load(ds.records[0]).sample_rate == 8000
    with pytest.raises(BadInputError, match="no such file"):
        open_dataset(tmp_path / "nowhere", modality="audio")


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (22050, 16000), (48000, 16000), (16000, 16000)])
def test_resample_keeps_duration_and_pitch(src, dst):
    wave = sine(1.0, src, freq=440.0)
    out = resample(wave, src, dst)
    assert out.dtype == np.float32 and len(out) == dst
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * dst / len(out)
    assert abs(peak_hz - 440.0) <= 1.0
    assert np.abs(out[dst // 4 : -dst // 4]).max() == pytest.approx(0.5, abs=0.02)  # no gain change mid-signal
    with pytest.raises(ValueError, match="positive"):
        resample(wave, 0, dst)
