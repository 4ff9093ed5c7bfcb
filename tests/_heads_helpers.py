"""Shared builders for the head, train, predict and CLI tests: real caches from generated images.

Images come from :func:`tlkit.testing.make_image_folder` (classes differ in colour, so a working head separates
them); features come from a random-init timm model through the real extraction engine into real HDF5 caches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tlkit.extraction import extract
from tlkit.host.api import get_backbone
from tlkit.testing import make_image_folder
from tlkit.testing.fake import FakeImageBackbone

ARCH = "timm/test_efficientnet"  # ~100k parameters, five cached blocks
INPUT = {"input_size": [3, 64, 64]}


def timm_weights(root: Path) -> Path:
    """A seeded random initialisation of :data:`ARCH` saved as a local weights file.

    Random-init timm weights differ from build to build, so a cache and a later ``tlkit predict`` on raw items
    (which rebuilds the backbone) only agree when the weights come from a file, as real fine-tuned weights would.
    """
    from safetensors.torch import save_file

    path = Path(root) / "test_efficientnet.safetensors"
    if not path.exists():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            module = get_backbone(ARCH, weights="none").module
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)
    return path


def timm_backbone(weights: Path, **preprocess: Any) -> Any:
    return get_backbone(ARCH, weights=str(weights), preprocess={**INPUT, **preprocess})


def image_split(root: Path, classes: int = 3, per_class: int = 20, seed: int = 0) -> Path:
    return make_image_folder(root, classes=classes, per_class=per_class, size=(40, 40), seed=seed)


def make_cache(folder: Path, out: Path, backbone: Any, **options: Any) -> Path:
    """Extract ``folder`` into ``out`` with the engine (one process, no workers: quick for a few dozen images)."""
    extract(backbone, folder, out, workers=0, **options)
    return out


class PlantedBackbone(FakeImageBackbone):
    """Cached layers where exactly one (``signal``: the mean colour) tells the classes apart.

    ``early``, ``late`` and the final features are pseudo-random functions of the image's total brightness, which
    :func:`make_image_folder` draws from the same distribution for every class: they carry no class information.
    """

    LAYERS = ("early", "signal", "late")

    def layer_names(self) -> list[str]:
        return list(self.LAYERS)

    @staticmethod
    def _noise(batch: torch.Tensor, salt: float) -> torch.Tensor:
        total = batch.double().sum(dim=(1, 2, 3))
        freqs = torch.arange(1, 17, dtype=torch.float64) * (12.9898 + salt)
        return ((torch.sin(total[:, None] * freqs) * 43758.5453) % 1.0 - 0.5).float()

    def _parts(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        colour = batch.mean(dim=(2, 3))
        signal = torch.cat([colour, torch.zeros(len(batch), 13)], dim=1)
        return {"early": self._noise(batch, 1.0), "signal": signal, "late": self._noise(batch, 2.0)}

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self._noise(batch, 3.0)

    def embed_layers(self, batch: torch.Tensor, layers: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = self._parts(batch)
        return self.embed(batch), {name: parts[name] for name in layers}
