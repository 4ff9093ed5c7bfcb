"""The forward side of extraction: a loaded backbone run on batches under the resolved runtime.

:class:`Runner` moves batches to the device (``channels_last`` for convolutional image networks), embeds them under
``torch.inference_mode`` and the runtime's autocast (the final embedding, chosen blocks and augmented views in one
pass), and backs off on out-of-memory with :class:`tlkit.runtime.batching.Backoff`. On the first batch it folds
BatchNorms into their convolutions (:mod:`tlkit.extraction.fold`), on a copy that is checked against the original and
used only while the runner is open; the caller's backbone is given back unchanged by :meth:`Runner.close`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tlkit.contract.backbone import Backbone, check_first_output
from tlkit.runtime.batching import Backoff, prefers_channels_last, slice_batch, to_device

if TYPE_CHECKING:
    import torch

    from tlkit.runtime.resolution import Runtime

#: The embeddings of one batch: the final features, the chosen blocks' pooled outputs, and one tensor per view.
Embedded = tuple["torch.Tensor", dict[str, "torch.Tensor"], list["torch.Tensor"]]


class Runner:
    """Runs a loaded backbone on batches: device, autocast, ``channels_last``, out-of-memory back-off."""

    def __init__(
        self,
        backbone: Backbone,
        runtime: Runtime,
        layers: Sequence[str] = (),
        store_dtype: str = "float32",
        fold: bool = True,
    ) -> None:
        import torch

        self.backbone, self.runtime, self.layers = backbone, runtime, list(layers)
        self.fold, self.folded = fold, 0  # whether to fold BatchNorms; how many were folded
        self._original: Any = None  # the caller's network while the folded copy is in use
        self.backoff: Backoff[Embedded] = Backoff(runtime)
        self.checked = False  # the first batch's output is checked against the spec (width, modality)
        self.out_dtype = torch.float16 if store_dtype == "float16" else torch.float32
        module = backbone.module
        module.eval()
        module.to(runtime.device)
        self.channels_last = prefers_channels_last(module, backbone.modality)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Give the backbone its own network back (a no-op when nothing was folded)."""
        if self._original is not None:
            self.backbone._module = self._original
            self._original = None

    def _fold(self, batch: Any) -> None:
        """Fold BatchNorms on a copy, checked in fp32 on the first row of the first batch."""
        import torch

        from tlkit.extraction.fold import folded_copy

        original = self.backbone.module
        sample = slice_batch(batch, 0, 1)

        def run(module: Any) -> torch.Tensor:
            self.backbone._module = module
            try:
                with torch.inference_mode():
                    return self.backbone.embed(sample)
            finally:
                self.backbone._module = original

        network, self.folded = folded_copy(original, run)
        if self.folded:
            if self.channels_last:
                network.to(memory_format=torch.channels_last)
            self._original = original
            self.backbone._module = network

    def to_device(self, batch: Any) -> Any:
        return to_device(batch, self.runtime.device, self.channels_last)

    def _forward_once(self, batch: Any, views: Sequence[Any]) -> Embedded:
        import torch

        with torch.inference_mode(), self.runtime.autocast():
            if self.layers:
                feats, lay = self.backbone.embed_layers(batch, self.layers)
            else:
                feats, lay = self.backbone.embed(batch), {}
            vfeats = [self.backbone.embed(v) for v in views]

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(self.out_dtype)

        return cast(feats), {k: cast(v) for k, v in lay.items()}, [cast(v) for v in vfeats]

    def forward(self, batch: Any, views: Sequence[Any], n: int) -> Embedded:
        """Embed one batch of ``n`` rows (already on the device). With ``auto`` batch size an out-of-memory error
        halves the sub-batch and retries the same rows, so no batch is lost."""

        def part(a: int, b: int) -> Embedded:
            if a == 0 and b == n:
                return self._forward_once(batch, views)
            return self._forward_once(slice_batch(batch, a, b), [slice_batch(v, a, b) for v in views])

        if self.fold and not self.checked and self._original is None:
            self._fold(batch)
        out = self.backoff.run(n, part, _join)
        if not self.checked:
            check_first_output(self.backbone, out[0], n)
            self.checked = True
        return out


#: The skip reason of an item whose embedding holds NaN or Inf: such rows never enter a cache.
NONFINITE_REASON = "backbone produced NaN/Inf features"


def finite_rows(features: torch.Tensor, layers: Mapping[str, torch.Tensor], views: Sequence[torch.Tensor]) -> Any:
    """``None`` when every row of a batch's embeddings (final features, layers and views) is finite, else the
    boolean mask of the finite rows. Called on host tensors (the writer thread), so it never waits on a GPU."""
    import torch

    ok = torch.isfinite(features).all(dim=1)
    for t in (*layers.values(), *views):
        ok &= torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    return None if bool(ok.all()) else ok


def _join(parts: Sequence[Embedded]) -> Embedded:
    import torch

    feats = torch.cat([p[0] for p in parts])
    lay = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
    vf = [torch.cat([p[2][i] for p in parts]) for i in range(len(parts[0][2]))]
    return feats, lay, vf


__all__ = ["NONFINITE_REASON", "Embedded", "Runner", "finite_rows"]
