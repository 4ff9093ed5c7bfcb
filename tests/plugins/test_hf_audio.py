"""The transformers audio plugin: tiny random wav2vec2, HuBERT, WavLM, data2vec-audio, AST and Whisper models saved
to disk with their feature extractors, then loaded by name like any local model."""

from __future__ import annotations

import json
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tlkit.data.audio import AudioClip, resample
from tlkit.errors import BadInputError, ConfigError
from tlkit.host.api import get_backbone
from tlkit.host.registry import resolve_backbone
from tlkit.testing import assert_conformant

W2V = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 8, 4),
    conv_stride=(5, 4, 4),  # 80x downsampling keeps sequences short
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
WHISPER_CHUNK = 6  # seconds; a tiny Whisper whose encoder takes 600 mel frames instead of 3000


def _w2v_fe():
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )


def _save(model, fe, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def audio_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTModel,
        Data2VecAudioConfig,
        Data2VecAudioModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2Model,
        WavLMConfig,
        WavLMModel,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    root = tmp_path_factory.mktemp("hf_audio")
    torch.manual_seed(1234)
    whisper = WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=WHISPER_CHUNK * 50,
        max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=3,
    )  # fmt: skip
    whisper_fe = WhisperFeatureExtractor(feature_size=16, chunk_length=WHISPER_CHUNK, sampling_rate=16000)
    ast = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_length=100,
                    num_mel_bins=16)  # fmt: skip
    return {
        # group norm in the first convolution: the case where zero padding would change a clip's features
        "wav2vec2": _save(Wav2Vec2Model(Wav2Vec2Config(**W2V, feat_extract_norm="group")), _w2v_fe(), root / "w2v"),
        "hubert": _save(
            HubertModel(HubertConfig(**W2V, feat_extract_norm="layer", do_stable_layer_norm=True)),
            _w2v_fe(),
            root / "hubert",
        ),
        "wavlm": _save(WavLMModel(WavLMConfig(**W2V, num_buckets=16, max_bucket_distance=50)), _w2v_fe(), root / "wl"),
        "data2vec-audio": _save(
            Data2VecAudioModel(Data2VecAudioConfig(**{**W2V, "num_conv_pos_embeddings": 5, "conv_pos_kernel_size": 5})),
            _w2v_fe(),
            root / "d2v",
        ),
        "whisper": _save(WhisperModel(whisper), whisper_fe, root / "whisper"),
        "ast": _save(ASTModel(ast), ASTFeatureExtractor(num_mel_bins=16, max_length=100), root / "ast"),
    }


def tone(seconds: float, rate: int = 16000, freq: float = 220.0, seed: int = 0) -> AudioClip:
    """A sine plus a little noise: deterministic, and different enough per call to tell clips apart."""
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return AudioClip((0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32), rate)


def _embed(bb, items) -> torch.Tensor:
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's mask-type notice inside WavLM attention
        return bb.embed(bb.preprocess(list(items)))


BLOCKS = {
    "wav2vec2": ["feature_extractor", "feature_projection", "encoder.layers.0", "encoder.layers.1"],
    "hubert": ["feature_extractor", "feature_projection", "encoder.layers.0", "encoder.layers.1"],
    "wavlm": ["feature_extractor", "feature_projection", "encoder.layers.0", "encoder.layers.1"],
    "data2vec-audio": ["feature_extractor", "feature_projection", "encoder.layers.0", "encoder.layers.1"],
    "whisper": ["conv", "layers.0", "layers.1"],
    "ast": ["embeddings", "encoder.layer.0", "encoder.layer.1"],
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_tiny_audio_models_load_embed_list_blocks_and_conform(audio_dirs, kind):
    bb = get_backbone(f"hf/{audio_dirs[kind]}")
    assert resolve_backbone(bb.name, bb.init_kwargs()).modality == "audio"  # the name and where the files are
    spec = bb.spec
    assert spec.modality == "audio" and spec.embed_dim == 32 and spec.preprocess["sample_rate"] == 16000
    assert spec.extra["model_type"] == {"ast": "audio-spectrogram-transformer"}.get(kind, kind)
    assert [b.name for b in bb.blocks()] == BLOCKS[kind]
    items = [tone(0.3), tone(1.1, 8000, seed=1), tone(2.0, 22050, freq=440, seed=2)]
    out = _embed(bb, items)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert_conformant(bb, items)


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2", "hubert", "data2vec-audio"])
def test_a_clip_embeds_the_same_alone_and_batched_with_a_longer_one(audio_dirs, kind):
    bb = get_backbone(f"hf/{audio_dirs[kind]}").load()
    one, five = tone(1.0), tone(5.0, freq=330, seed=3)
    alone = _embed(bb, [one])[0]
    batched = _embed(bb, [five, one])[1]
    diff = (alone - batched).abs().max().item()
    print(f"audio padding invariance ({kind}, 1 s alone vs batched with 5 s): max abs diff {diff:.3g}")
    assert diff < 1e-4
    if kind == "wav2vec2":  # the batch really was padded, and the group norm really would have noticed
        batch = bb.preprocess([five, one])
        values, mask = batch["input_values"][:, 0], batch["attention_mask"][:, 0]  # [N, K=1, T] -> [N, T]
        assert mask[1].sum() < mask.shape[1]
        with torch.inference_mode():
            plain = bb.module(input_values=values, attention_mask=mask).last_hidden_state[1, :10]
            lone = bb.module(input_values=bb.preprocess([one])["input_values"][:, 0]).last_hidden_state[0, :10]
        assert not torch.allclose(plain, lone, atol=1e-3)


def test_whisper_pools_only_the_frames_of_real_audio(audio_dirs):
    bb = get_backbone(f"hf/{audio_dirs['whisper']}").load()
    clip = tone(1.0)
    batch = bb.preprocess([clip])
    assert batch["input_features"].shape[-1] == WHISPER_CHUNK * 100  # padded to the whole chunk
    with torch.inference_mode():
        hidden = bb.module(input_features=batch["input_features"][:, 0]).last_hidden_state[0]
        ours = bb.embed(batch)[0]
    valid = 50  # 1 s = 100 mel frames = 50 encoder frames
    torch.testing.assert_close(ours, hidden[:valid].mean(0))
    assert not torch.allclose(ours, hidden.mean(0), atol=1e-3)


def test_long_audio_is_windowed_and_averaged_by_frames(audio_dirs):
    bb = get_backbone(f"hf/{audio_dirs['wav2vec2']}", preprocess={"window_seconds": 2.0, "hop_seconds": 2.0}).load()
    clip = tone(5.0)
    processed = bb.preprocess_item(clip)
    assert [len(x) for x in processed["inputs"]] == [32000, 32000, 16000]
    assert bb.item_flags(processed) == ("windowed",) and bb.item_flags(bb.preprocess_item(tone(1.0))) == ()
    pieces = [AudioClip(clip.waveform[s : s + 32000], 16000) for s in (0, 32000, 64000)]
    per_window = _embed(bb, pieces)
    frames = torch.tensor([bb.module._get_feat_extract_output_lengths(len(p.waveform)) for p in pieces]).float()
    expected = (per_window * frames[:, None]).sum(0) / frames.sum()
    torch.testing.assert_close(_embed(bb, [clip])[0], expected, rtol=1e-5, atol=1e-5)
    assert bb.replace(preprocess={"hop_seconds": 1.0}).fingerprint() != bb.fingerprint()
    assert len(bb.replace(preprocess={"hop_seconds": 1.0}).preprocess_item(clip)["inputs"]) == 4
    only_window = get_backbone(f"hf/{audio_dirs['wav2vec2']}", preprocess={"window_seconds": 2.0})
    assert only_window.spec.preprocess["hop_seconds"] == 2.0  # the hop follows the window unless set


def test_a_batch_of_windowed_items_splits_by_item(audio_dirs):
    """The extraction engine halves a batch along dim 0 after running out of memory: rows must be items."""
    bb = get_backbone(f"hf/{audio_dirs['wav2vec2']}", preprocess={"window_seconds": 1.0, "hop_seconds": 1.0}).load()
    clips = [tone(0.5), tone(3.2, seed=1), tone(1.0, seed=2), tone(2.5, seed=3)]
    batch = bb.preprocess(clips)
    assert batch["window_mask"].shape == (4, 4) and batch["window_mask"].sum() == 1 + 4 + 1 + 3
    full = _embed(bb, clips)
    with torch.inference_mode():
        halves = [bb.embed({k: v[a : a + 2] for k, v in batch.items()}) for a in (0, 2)]
    torch.testing.assert_close(torch.cat(halves), full, rtol=1e-5, atol=1e-5)
    for i, clip in enumerate(clips):
        torch.testing.assert_close(_embed(bb, [clip])[0], full[i], rtol=1e-5, atol=1e-5)


def test_long_whisper_audio_uses_several_chunks(audio_dirs):
    bb = get_backbone(f"hf/{audio_dirs['whisper']}").load()
    out = bb.preprocess_item(tone(14.0))
    assert len(out["inputs"]) == 3 and out["lengths"] == [600, 600, 200]
    with pytest.raises(ConfigError, match="exceeds the model's input length"):
        get_backbone(f"hf/{audio_dirs['whisper']}", preprocess={"window_seconds": 10}).preprocess_item(tone(1.0))


@pytest.mark.parametrize("kind", ["wav2vec2", "whisper", "ast"])
def test_short_and_silent_audio_are_padded_and_finite(audio_dirs, kind):
    bb = get_backbone(f"hf/{audio_dirs[kind]}").load()
    silent = AudioClip(np.zeros(16000, np.float32), 16000)
    tiny = AudioClip(np.full(3, 0.1, np.float32), 16000)  # far shorter than one frame
    out = _embed(bb, [silent, tiny, tone(0.5)])
    assert torch.isfinite(out).all()


def test_clips_are_resampled_to_the_model_rate(audio_dirs):
    bb = get_backbone(f"hf/{audio_dirs['hubert']}").load()
    at_8k = tone(1.5, 8000)
    at_16k = AudioClip(resample(at_8k.waveform, 8000, 16000), 16000)
    torch.testing.assert_close(_embed(bb, [at_8k]), _embed(bb, [at_16k]))
    stereo = AudioClip(np.stack([at_8k.waveform, at_8k.waveform], axis=1), 8000)
    torch.testing.assert_close(_embed(bb, [stereo]), _embed(bb, [at_8k]))
    assert bb.sort_key(at_8k) == 24000
    with pytest.raises(ConfigError, match="differs from the model's own 16000"):
        bb.replace(preprocess={"sample_rate": 22050}).preprocess_item(at_8k)


def test_ast_mean_pooling_masks_padded_patches(audio_dirs):
    bb = get_backbone(f"hf/{audio_dirs['ast']}", pooling="mean").load()
    batch = bb.preprocess([tone(0.5)])
    with torch.inference_mode():
        hidden = bb.module(input_values=batch["input_values"][:, 0]).last_hidden_state[0]
        ours = bb.embed(batch)[0]
    f_dim, t_dim = bb.module.embeddings.get_shape(bb.module.config)
    frames = batch["lengths"].item()
    valid_t = [t for t in range(t_dim) if t * 10 < frames]
    rows = [2 + f * t_dim + t for f in range(f_dim) for t in valid_t]
    torch.testing.assert_close(ours, hidden[rows].mean(0))
    with pytest.raises(ConfigError, match="pooler, mean, max"):
        get_backbone(f"hf/{audio_dirs['ast']}", pooling="cls").spec.to_dict()


def test_audio_layers_and_grad_checkpointing(audio_dirs):
    bb = get_backbone(f"hf/{audio_dirs['wav2vec2']}").load()
    assert bb.layer_names() == ["feature_projection", "encoder.layers.0", "encoder.layers.1"]
    batch = bb.preprocess([tone(0.7), tone(1.3)])
    with torch.inference_mode():
        final, layers = bb.embed_layers(batch, bb.layer_names())
    assert set(layers) == set(bb.layer_names()) and all(v.shape == (2, 32) for v in layers.values())
    torch.testing.assert_close(layers["encoder.layers.1"], final)  # post-norm: the last layer's output is final
    assert bb.set_grad_checkpointing(True) is True
    bb.module.train()
    bb.embed(batch).sum().backward()
    assert bb.module.encoder.layers[0].attention.q_proj.weight.grad is not None


def test_missing_feature_extractor_and_unsupported_types(audio_dirs, tmp_path):
    bare = shutil.copytree(audio_dirs["wav2vec2"], tmp_path / "bare")
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(BadInputError, match="no preprocessor_config.json"):
        get_backbone(f"hf/{bare}").spec.to_dict()
    odd = tmp_path / "clap"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "clap"}))
    with pytest.raises(BadInputError, match=r"'clap' is not supported.*audio: wav2vec2, hubert"):
        get_backbone(f"hf/{odd}")
    text_model = tmp_path / "text"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BadInputError, match=r"holds a bert model \(text\), but this backbone is audio"):
        get_backbone(f"hf/{audio_dirs['whisper']}", weights=str(text_model)).spec.to_dict()


def test_audio_directories_load_without_network(audio_dirs, monkeypatch):
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    attempts.clear()
    for kind in ("whisper", "wav2vec2", "ast"):
        bb = get_backbone(f"hf/{audio_dirs[kind]}")
        bb.fingerprint()
        assert _embed(bb.load(), [tone(0.4)]).shape == (1, 32)
    assert resolve_backbone("hf/openai/whisper-base").modality == "audio"
    assert attempts == []


def test_pickling_carries_preprocessing_and_deepcopy_keeps_the_network(audio_dirs):
    """DataLoader workers started with spawn pickle the backbone: wav2vec2's weight-normed convolution cannot be
    pickled, and workers need only the feature extractor. A deep copy keeps the (changed) network."""
    import copy
    import pickle

    bb = get_backbone(f"hf/{audio_dirs['wav2vec2']}").load()
    clip = tone(0.6)
    clone = pickle.loads(pickle.dumps(bb))
    assert not clone.loaded
    torch.testing.assert_close(clone.preprocess([clip])["input_values"], bb.preprocess([clip])["input_values"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stands in for fine-tuning
        for p in bb.module.encoder.layers.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    twin = copy.deepcopy(bb)
    assert twin.loaded
    torch.testing.assert_close(_embed(twin, [clip]), _embed(bb, [clip]))
    assert not torch.allclose(_embed(clone, [clip]), _embed(bb, [clip]))  # the clone reloaded the saved weights
