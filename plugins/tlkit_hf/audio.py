"""Audio encoders from transformers: wav2vec2, HuBERT, WavLM, data2vec-audio, AST and the Whisper encoder.

An item (an :class:`tlkit.plugin.AudioClip`) is mixed to mono, resampled to the model's rate, padded up to
``min_seconds`` when shorter, and cut into windows of ``window_seconds`` every ``hop_seconds``. Each window goes
through the model's own feature extractor on its own, so normalisation never sees padding. The item's embedding is
the mean of its windows' pooled outputs, weighted by each window's number of real frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.plugin import AudioClip, BackboneSpec, BadInputError, ConfigError, decode_audio, resample, to_mono
from tlkit_hf.audio_families import FAMILIES, AudioFamily
from tlkit_hf.base import HFBackbone
from tlkit_hf.blocks import BlockLayout
from tlkit_hf.naming import AUDIO_MODEL_TYPES
from tlkit_hf.pooling import pool
from tlkit_hf.sources import FEATURE_EXTRACTOR_FILES

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


class HFAudioBackbone(HFBackbone):
    """``hf/<id or dir>`` for an audio encoder. ``preprocess`` keys: ``sample_rate`` (the model's own),
    ``window_seconds`` and ``hop_seconds`` (long audio), ``min_seconds`` (shorter audio is zero-padded)."""

    modality = "audio"
    preprocessing_files = FEATURE_EXTRACTOR_FILES

    # -- config -------------------------------------------------------------------------------------------------
    @cached_property
    def family(self) -> AudioFamily:
        return FAMILIES[AUDIO_MODEL_TYPES[self.model_type]]

    @cached_property
    def fe_config(self) -> dict[str, Any]:
        cfg = self.files.read_json("preprocessor_config.json", model_file=True)
        if not cfg:
            raise BadInputError(
                f"{self.name}: no preprocessor_config.json beside the model; save the feature extractor into the "
                f"same directory (AutoFeatureExtractor.save_pretrained)"
            )
        return dict(cfg)

    @cached_property
    def _spec(self) -> BackboneSpec:
        family, cfg, fe_cfg = self.family, self.hf_config, self.fe_config
        overrides = self.preprocess_overrides
        defaults = family.defaults(fe_cfg, cfg)
        if "window_seconds" in overrides and "hop_seconds" not in overrides:
            defaults["hop_seconds"] = overrides["window_seconds"]  # the hop follows a changed window
        preprocess = {"sample_rate": int(fe_cfg.get("sampling_rate", 16000)), **defaults, **overrides}
        pooling = self.pooling or family.default_pooling
        if pooling not in family.pooling_choices:
            raise ConfigError(
                f"{self.name}: pooling {pooling!r} is not available for {cfg.model_type}; "
                f"choose one of {', '.join(family.pooling_choices)}"
            )
        dim = cfg.output_hidden_size if getattr(cfg, "add_adapter", False) else cfg.hidden_size
        return BackboneSpec(
            name=self.name,
            modality=self.modality,
            embed_dim=int(dim),
            preprocess=preprocess,
            pooling=pooling,
            weights=self.weights,
            source=self._source(),
            license=self.files.license(),
            extra={"model_type": cfg.model_type, "family": family.name, "num_layers": int(cfg.num_hidden_layers)},
        )

    @property
    def spec(self) -> BackboneSpec:
        return self._spec

    def _select_module(self, model: nn.Module) -> nn.Module:
        return model.get_encoder() if self.family.name == "whisper" else model

    @cached_property
    def feature_extractor(self) -> Any:
        from transformers import AutoFeatureExtractor

        self.fe_config  # noqa: B018 - a clear error when the directory has none
        ref, kwargs = self.files.pretrained_args()
        with self.loading("feature extractor"):
            return AutoFeatureExtractor.from_pretrained(ref, **kwargs)

    def validate(self) -> None:
        """Overridden rate and window settings are checked against the model here, not per item."""
        super().validate()
        if set(self.preprocess_overrides) & {"sample_rate", "window_seconds", "hop_seconds", "min_seconds"}:
            self._settings()

    # -- preprocessing ------------------------------------------------------------------------------------------
    def _settings(self) -> tuple[int, int, int, int]:
        """``(rate, window, hop, minimum)`` in samples, checked against what the model accepts."""
        p = self.spec.preprocess
        rate = int(p["sample_rate"])
        own = int(self.fe_config.get("sampling_rate", rate))
        if rate != own:
            raise ConfigError(f"{self.name}: sample_rate {rate} differs from the model's own {own} Hz; remove it")
        limit = self.family.max_window_seconds(self.fe_config)
        window, hop, minimum = float(p["window_seconds"]), float(p["hop_seconds"]), float(p["min_seconds"])
        if limit is not None and window > limit + 1e-6:
            raise ConfigError(f"{self.name}: window_seconds {window} exceeds the model's input length {limit} s")
        if window <= 0 or hop <= 0 or minimum < 0:
            raise ConfigError(f"{self.name}: window_seconds and hop_seconds must be positive, min_seconds >= 0")
        return rate, max(1, round(window * rate)), max(1, round(hop * rate)), max(1, math.ceil(minimum * rate))

    def waveform(self, item: Any) -> np.ndarray:
        """The item as a mono float32 waveform at the model's rate (an AudioClip, a path, or ``(array, rate)``)."""
        if isinstance(item, str | Path):
            item = decode_audio(item)
        if isinstance(item, tuple) and len(item) == 2:
            item = AudioClip(item[0], int(item[1]))
        if not isinstance(item, AudioClip):
            raise TypeError(f"{self.name} expects an AudioClip, a path or (waveform, sample_rate), not {type(item)}")
        return resample(to_mono(item.waveform), item.sample_rate, self.spec.preprocess["sample_rate"])

    def preprocess_item(self, item: Any, *, train: bool = False) -> dict[str, Any]:
        import numpy as np

        rate, window, hop, minimum = self._settings()
        wave = self.waveform(item)
        if len(wave) < minimum:
            wave = np.pad(wave, (0, minimum - len(wave)))  # too short for one frame: pad with silence
        inputs, lengths = [], []
        for piece in split_windows(wave, window, hop):
            if len(piece) < minimum:
                piece = np.pad(piece, (0, minimum - len(piece)))
            values, valid = self.family.featurize(self.feature_extractor, piece, rate)
            inputs.append(values)
            lengths.append(valid)
        return {"inputs": inputs, "lengths": lengths}

    def item_flags(self, processed: Any) -> tuple[str, ...]:
        return ("windowed",) if isinstance(processed, dict) and len(processed.get("inputs", ())) > 1 else ()

    def sort_key(self, item: Any) -> int | None:
        rate = getattr(item, "sample_rate", None)
        if rate is None:
            return None
        return int(item.n_samples * self.spec.preprocess["sample_rate"] / rate)

    def collate(self, processed: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Windows laid out per item, ``[N, K, ...]`` with ``window_mask`` ``[N, K]`` marking real windows, so a batch
        splits by item along dim 0 like any other batch."""
        import torch

        per_item = max(len(p["inputs"]) for p in processed)
        inputs, lengths, slots = [], [], []
        for i, p in enumerate(processed):
            for j, (values, valid) in enumerate(zip(p["inputs"], p["lengths"], strict=True)):
                inputs.append(values)
                lengths.append(valid)
                slots.append(i * per_item + j)
        flat = self.family.collate(inputs, lengths)
        slot = torch.tensor(slots, dtype=torch.long)
        batch = {}
        for key, t in flat.items():
            full = t.new_zeros((len(processed) * per_item, *t.shape[1:]))
            full[slot] = t
            batch[key] = full.view(len(processed), per_item, *t.shape[1:])
        mask = torch.zeros(len(processed) * per_item, dtype=torch.bool)
        mask[slot] = True
        batch["window_mask"] = mask.view(len(processed), per_item)
        return batch

    # -- forward ------------------------------------------------------------------------------------------------
    def _forward_pool(
        self, batch: dict[str, torch.Tensor], captured: dict[str, torch.Tensor], layers: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        module, family, mode = self.module, self.family, self.spec.pooling
        windows, index = flatten_windows(batch)
        out, frames = family.forward(module, windows)
        weights = frames.sum(1).clamp(min=1)
        per_window = out.pooler_output if mode == "pooler" else pool(out.last_hidden_state, frames, mode)
        n_items = batch["window_mask"].shape[0]
        final = average_windows(per_window, weights, index, n_items)
        layer_mode = mode if mode != "pooler" else "mean"
        pooled = {}
        for name in layers:
            hidden = captured[name]
            per_layer = pool(hidden, family.layer_mask(module, windows, hidden), layer_mode)
            pooled[name] = average_windows(per_layer, weights, index, n_items)
        return final, pooled

    # -- structure ----------------------------------------------------------------------------------------------
    def layout(self) -> BlockLayout:
        return self.family.layout(self.module, self.hf_config)

    def layer_paths(self) -> dict[str, str]:
        return self.family.layer_paths(self.module, self.hf_config)


def split_windows(wave: np.ndarray, window: int, hop: int) -> list[np.ndarray]:
    """Windows of ``window`` samples every ``hop`` samples that cover the whole waveform (the last may be short)."""
    n = len(wave)
    if n <= window:
        return [wave]
    count = math.ceil((n - window) / hop) + 1
    return [wave[i * hop : i * hop + window] for i in range(count)]


def flatten_windows(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The real windows of a ``[N, K, ...]`` batch as ``[W, ...]`` tensors, and the item each belongs to."""
    import torch

    mask = batch["window_mask"]
    keep = mask.flatten()
    windows = {k: t.flatten(0, 1)[keep] for k, t in batch.items() if k != "window_mask"}
    owner = torch.arange(mask.shape[0], device=mask.device).repeat_interleave(mask.shape[1])[keep]
    return windows, owner


def average_windows(per_window: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, n_items: int) -> torch.Tensor:
    """Each item's windows averaged, weighted by their real frames: ``[W, D]`` -> ``[N, D]`` (float32)."""
    import torch

    w = weights.to(torch.float32).view(-1, 1)
    total = torch.zeros(n_items, per_window.shape[1], dtype=torch.float32, device=per_window.device)
    total.index_add_(0, index, per_window.float() * w)
    norm = torch.zeros(n_items, 1, dtype=torch.float32, device=per_window.device).index_add_(0, index, w)
    return total / norm.clamp(min=1e-12)
