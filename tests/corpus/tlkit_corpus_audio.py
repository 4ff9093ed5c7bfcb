"""A tiny test-only audio plugin, ``corpus/audio``: a real seeded 1-D convolutional network over 8 kHz mono audio.

tlkit ships fake image and text backbones but no fake audio one, and the transformers audio models cost seconds to
import in every subprocess. The corpus test installs this module as a plugin (a ``.dist-info`` with a ``tlkit``
entry point in a temporary folder on ``PYTHONPATH``), so the CLI discovers it the way it discovers any plugin.

Items follow the transformers audio plugin's rules: mixed to mono, resampled to the model's rate, zero-padded up to
``seconds`` and cut there, so that every item's embedding is independent of its batch.
"""

from __future__ import annotations

from typing import Any

from tlkit.plugin import AudioClip, Backbone, BackboneSpec, Block, blocks_from_prefixes, hookimpl


class CorpusAudioBackbone(Backbone):
    """Two strided convolutions and mean pooling over time."""

    modality = "audio"
    RATE = 8000
    WIDTHS = (8, 16)

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(
            name=self.name,
            modality=self.modality,
            embed_dim=self.WIDTHS[-1],
            preprocess={"sample_rate": self.RATE, "seconds": 1.0, **self.preprocess_overrides},
            pooling=self.pooling or "mean",
            weights=self.weights,
            source="tests/corpus (seed 0)",
            license="Apache-2.0",
        )

    def build_module(self) -> Any:
        import torch
        from torch import nn

        gen = torch.Generator().manual_seed(0)
        w = self.WIDTHS
        module = nn.Sequential(nn.Conv1d(1, w[0], 16, stride=8), nn.ReLU(), nn.Conv1d(w[0], w[1], 8, stride=4))
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        return module

    def preprocess_item(self, item: Any, *, train: bool = False) -> Any:
        import torch

        from tlkit.plugin import decode_audio, resample, to_mono

        if not isinstance(item, AudioClip):
            item = decode_audio(item)
        cfg = self.spec.preprocess
        rate = int(cfg["sample_rate"])
        size = int(float(cfg["seconds"]) * rate)
        wav = resample(to_mono(item.waveform), item.sample_rate, rate)[:size]
        out = torch.zeros(1, size)
        out[0, : len(wav)] = torch.from_numpy(wav.copy())
        return out

    def sort_key(self, item: Any) -> int | None:
        return item.n_samples if isinstance(item, AudioClip) else None

    def embed(self, batch: Any) -> Any:
        return self.module(batch).mean(dim=2).float()

    def blocks(self) -> list[Block]:
        return blocks_from_prefixes(self.module, [("conv.0", ["0"]), ("conv.1", ["2"])], "conv.1")


@hookimpl
def tlkit_register_backbones(register: Any) -> None:
    register("corpus/audio", CorpusAudioBackbone, summary="tiny 1-D CNN over 8 kHz audio (tests/corpus)")
