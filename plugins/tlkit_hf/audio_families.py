"""The three kinds of audio encoder, by input: raw waveform (wav2vec2, HuBERT, WavLM, data2vec-audio), Whisper's
30-second log-mel, and AST's filter-bank patches.

Each family turns one window of audio into model input plus its valid length, pads a batch of windows, runs the
model, and says which output frames are real (so pooling never counts padding), and how the model splits into
blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from tlkit_hf.blocks import BlockLayout, find_layer_list
from tlkit_hf.pooling import lengths_to_mask

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


class AudioFamily:
    name = ""
    pooling_choices: tuple[str, ...] = ("mean", "max")
    default_pooling = "mean"

    def defaults(self, fe_cfg: dict[str, Any], config: Any) -> dict[str, Any]:
        """``window_seconds``, ``hop_seconds`` and ``min_seconds`` from the feature extractor's own config."""
        raise NotImplementedError

    def max_window_seconds(self, fe_cfg: dict[str, Any]) -> float | None:
        return None

    def featurize(self, fe: Any, window: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        """Model input for one unpadded window, and its valid length (samples or spectrogram frames)."""
        raise NotImplementedError

    def collate(self, inputs: Sequence[np.ndarray], lengths: Sequence[int]) -> dict[str, torch.Tensor]:
        import numpy as np
        import torch

        return {
            "input_values": torch.from_numpy(np.stack(inputs)),
            "lengths": torch.tensor(list(lengths), dtype=torch.long),
        }

    def forward(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """The model output and the ``[W, T]`` mask of real frames in its ``last_hidden_state``."""
        raise NotImplementedError

    def layer_mask(self, module: nn.Module, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """The mask of real positions in a captured layer output ``[W, T, D]``."""
        raise NotImplementedError

    def layout(self, module: nn.Module, config: Any) -> BlockLayout:
        raise NotImplementedError

    def layer_paths(self, module: nn.Module, config: Any) -> dict[str, str]:
        return self.layout(module, config).layer_paths()


# -- wav2vec2, HuBERT, WavLM, data2vec-audio ------------------------------------------------------------------------
class Wav2Vec2Family(AudioFamily):
    """Raw waveform in, one frame per 20 ms out. Windows of 20 s by default."""

    name = "wav2vec2"

    def defaults(self, fe_cfg: dict[str, Any], config: Any) -> dict[str, Any]:
        rate = int(fe_cfg.get("sampling_rate", 16000))
        return {"window_seconds": 20.0, "hop_seconds": 20.0, "min_seconds": receptive_field(config) / rate}

    def featurize(self, fe: Any, window: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        import numpy as np

        # One window at a time, unpadded: the zero-mean/unit-variance normalisation sees only real samples.
        values = fe(window, sampling_rate=rate, return_tensors="np")["input_values"][0]
        return np.asarray(values, dtype=np.float32), len(window)

    def collate(self, inputs: Sequence[np.ndarray], lengths: Sequence[int]) -> dict[str, torch.Tensor]:
        import torch

        width = max(lengths)
        values = torch.zeros(len(inputs), width, dtype=torch.float32)
        for i, arr in enumerate(inputs):
            values[i, : len(arr)] = torch.from_numpy(arr)
        lens = torch.tensor(list(lengths), dtype=torch.long)
        return {"input_values": values, "attention_mask": lengths_to_mask(lens, width).long(), "lengths": lens}

    def forward(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        values, mask = batch["input_values"], batch["attention_mask"]
        padded = bool((batch["lengths"] < values.shape[1]).any())
        group_norm = getattr(module.config, "feat_extract_norm", "layer") == "group"
        with ExitStack() as stack:
            if padded and group_norm:
                stack.enter_context(per_item_feature_encoder(module, batch["lengths"]))
            if padded:
                stack.enter_context(zero_padding_between_pos_convs(module, batch["lengths"]))
            out = module(input_values=values, attention_mask=mask)
        adapter = bool(getattr(module.config, "add_adapter", False))
        return out, frame_mask(module, batch["lengths"], out.last_hidden_state.shape[1], adapter)

    def layer_mask(self, module: nn.Module, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        return frame_mask(module, batch["lengths"], hidden.shape[1], False)

    def layout(self, module: nn.Module, config: Any) -> BlockLayout:
        n = int(config.num_hidden_layers)
        # Everything that runs between the convolutions and the first layer joins feature_projection.
        early = ["feature_projection", "masked_spec_embed", "encoder.pos_conv_embed"]
        if not getattr(config, "do_stable_layer_norm", False):
            early.append("encoder.layer_norm")  # applied before the layers in the post-norm variant
        before = [("feature_extractor", ["feature_extractor"]), ("feature_projection", early)]
        return BlockLayout(find_layer_list(module, n), "encoder.layers", n, before)

    def layer_paths(self, module: nn.Module, config: Any) -> dict[str, str]:
        return {"feature_projection": "feature_projection", **self.layout(module, config).layer_paths()}


def frame_mask(module: nn.Module, lengths: torch.Tensor, width: int, adapter: bool) -> torch.Tensor:
    """Which of ``width`` output frames come from real samples, for sample counts ``lengths``."""
    import inspect

    fn = module._get_feat_extract_output_lengths
    kwargs = {"add_adapter": adapter} if "add_adapter" in inspect.signature(fn).parameters else {}
    return lengths_to_mask(fn(lengths, **kwargs).clamp(min=1), width)


def receptive_field(config: Any) -> int:
    """Samples the convolutional feature encoder needs to produce one frame (400 for the usual config)."""
    size, jump = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=False):
        size += (int(kernel) - 1) * jump
        jump *= int(stride)
    return size


class _PerItemEncoder:
    """Runs a group-normalised convolutional feature encoder on each window's real samples only.

    Group norm in the first convolution normalises over time, so zero padding would change a clip's features.
    Windows of equal length still run together.
    """

    def __init__(self, inner: nn.Module, lengths: torch.Tensor) -> None:
        self.inner, self.lengths = inner, lengths

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        import torch

        outs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for length in sorted({int(v) for v in self.lengths.tolist()}):
            rows = torch.nonzero(self.lengths == length).flatten()
            outs[length] = (rows, self.inner(values[rows, :length]))
        width = max(f.shape[-1] for _, f in outs.values())
        sample = next(iter(outs.values()))[1]
        result = sample.new_zeros(values.shape[0], sample.shape[1], width)
        for rows, feats in outs.values():
            result[rows, :, : feats.shape[-1]] = feats
        return result


@contextmanager
def per_item_feature_encoder(module: nn.Module, lengths: torch.Tensor) -> Iterator[None]:
    encoder = module.feature_extractor
    # An instance attribute shadows the class's forward for this call only; hooks and parameter names are untouched.
    encoder.forward = _PerItemEncoder(encoder.forward, lengths)
    try:
        yield
    finally:
        del encoder.forward  # the class method is back


@contextmanager
def zero_padding_between_pos_convs(module: nn.Module, lengths: torch.Tensor) -> Iterator[None]:
    """Keep padded frames at zero between stacked positional convolutions (data2vec-audio has several).

    A lone clip's convolution sees zeros past its end; in a padded batch the frames past the end hold whatever the
    previous convolution, norm and activation made of the padding, and the next convolution would mix that in.
    """
    from torch import nn

    layers = getattr(getattr(getattr(module, "encoder", None), "pos_conv_embed", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) < 2:
        yield
        return

    def hook(_mod: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        keep = frame_mask(module, lengths.to(output.device), output.shape[-1], False)
        return output * keep.unsqueeze(1).to(output.dtype)  # [W, C, T]: channels first inside the conv stack

    handles = [layer.register_forward_hook(hook) for layer in layers[:-1]]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# -- Whisper --------------------------------------------------------------------------------------------------------
class WhisperFamily(AudioFamily):
    """Log-mel padded to the model's chunk (30 s); pooling counts only the frames of real audio."""

    name = "whisper"

    def _chunk_seconds(self, fe_cfg: dict[str, Any]) -> float:
        return float(fe_cfg.get("chunk_length", 30))

    def defaults(self, fe_cfg: dict[str, Any], config: Any) -> dict[str, Any]:
        chunk = self._chunk_seconds(fe_cfg)
        rate = int(fe_cfg.get("sampling_rate", 16000))
        return {"window_seconds": chunk, "hop_seconds": chunk, "min_seconds": int(fe_cfg.get("hop_length", 160)) / rate}

    def max_window_seconds(self, fe_cfg: dict[str, Any]) -> float | None:
        return self._chunk_seconds(fe_cfg)

    def featurize(self, fe: Any, window: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        import numpy as np

        out = fe(window, sampling_rate=rate, return_tensors="np", return_attention_mask=True)
        return np.asarray(out["input_features"][0], dtype=np.float32), int(out["attention_mask"][0].sum())

    def collate(self, inputs: Sequence[np.ndarray], lengths: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().collate(inputs, lengths)
        return {"input_features": batch["input_values"], "lengths": batch["lengths"]}

    def _mask(self, module: nn.Module, batch: dict[str, torch.Tensor], width: int) -> torch.Tensor:
        return lengths_to_mask(module._get_feat_extract_output_lengths(batch["lengths"]).clamp(min=1), width)

    def forward(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        out = module(input_features=batch["input_features"])
        return out, self._mask(module, batch, out.last_hidden_state.shape[1])

    def layer_mask(self, module: nn.Module, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        return self._mask(module, batch, hidden.shape[1])

    def layout(self, module: nn.Module, config: Any) -> BlockLayout:
        n = int(config.encoder_layers)
        before = [("conv", ["conv1", "conv2", "embed_positions"])]
        return BlockLayout(find_layer_list(module, n), "layers", n, before)


# -- Audio Spectrogram Transformer ----------------------------------------------------------------------------------
class ASTFamily(AudioFamily):
    """Kaldi filter banks (25 ms frames every 10 ms) padded to ``max_length`` frames and cut into patches."""

    name = "ast"
    pooling_choices = ("pooler", "mean", "max")
    default_pooling = "pooler"  # (CLS + distillation token) / 2, what AST's own classifier reads
    FRAME, SHIFT = 0.025, 0.010

    def defaults(self, fe_cfg: dict[str, Any], config: Any) -> dict[str, Any]:
        frames = int(fe_cfg.get("max_length", 1024))
        window = round((frames - 1) * self.SHIFT + self.FRAME, 4)
        return {"window_seconds": window, "hop_seconds": window, "min_seconds": self.FRAME}

    def max_window_seconds(self, fe_cfg: dict[str, Any]) -> float | None:
        return self.defaults(fe_cfg, None)["window_seconds"]

    def featurize(self, fe: Any, window: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        import numpy as np

        values = fe(window, sampling_rate=rate, return_tensors="np")["input_values"][0]
        win, shift = round(rate * self.FRAME), round(rate * self.SHIFT)
        frames = 1 + (len(window) - win) // shift if len(window) >= win else 1
        return np.asarray(values, dtype=np.float32), int(min(frames, values.shape[0]))

    def _mask(self, module: nn.Module, batch: dict[str, torch.Tensor], width: int) -> torch.Tensor:
        import torch

        config = module.config
        f_dim, t_dim = module.embeddings.get_shape(config)
        starts = torch.arange(t_dim, device=batch["lengths"].device) * config.time_stride
        valid_t = starts.view(1, -1) < batch["lengths"].view(-1, 1)  # [W, t_dim]
        patches = valid_t.unsqueeze(1).expand(-1, f_dim, -1).reshape(valid_t.shape[0], -1)  # index f * t_dim + t
        special = torch.zeros(valid_t.shape[0], width - patches.shape[1], dtype=torch.bool, device=patches.device)
        return torch.cat([special, patches], dim=1)  # the CLS and distillation tokens are not frames

    def forward(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        out = module(input_values=batch["input_values"])
        return out, self._mask(module, batch, out.last_hidden_state.shape[1])

    def layer_mask(self, module: nn.Module, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        return self._mask(module, batch, hidden.shape[1])

    def layout(self, module: nn.Module, config: Any) -> BlockLayout:
        n = int(config.num_hidden_layers)
        return BlockLayout(find_layer_list(module, n), "encoder.layer", n, [("embeddings", ["embeddings"])])

    def layer_paths(self, module: nn.Module, config: Any) -> dict[str, str]:
        return {"embeddings": "embeddings", **self.layout(module, config).layer_paths()}


FAMILIES: dict[str, AudioFamily] = {f.name: f for f in (Wav2Vec2Family(), WhisperFamily(), ASTFamily())}
