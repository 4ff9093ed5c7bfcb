"""Tiny deterministic backbones for tests and examples: ``fake/image`` and ``fake/text``.

They are real torch networks (a few thousand parameters), so extraction, caching and fine-tuning run end to end
in milliseconds. ``weights="pretrained"`` and ``"none"`` both give a fixed seeded initialisation; a local
``.safetensors`` file loads like any other checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from tlkit.contract.backbone import Backbone, BackboneSpec, Block, blocks_from_prefixes

if TYPE_CHECKING:
    import torch
    from torch import nn


def _load_local_state(backbone: Backbone, module: nn.Module) -> None:
    from tlkit.contract.weights import load_state_dict_file

    module.load_state_dict(load_state_dict_file(backbone.local_weights_path()))


class FakeImageBackbone(Backbone):
    """A 3-stage convolutional network on small images."""

    modality = "image"
    DEFAULT_PREPROCESS = {
        "input_size": [3, 32, 32],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    WIDTHS = (8, 16, 16)

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(
            name=self.name,
            modality=self.modality,
            embed_dim=self.WIDTHS[-1],
            preprocess={**self.DEFAULT_PREPROCESS, **self.preprocess_overrides},
            pooling=self.pooling or "avg",
            weights=self.weights,
            source="tlkit.testing (seed 0)",
            license="Apache-2.0",
        )

    def build_module(self) -> nn.Module:
        import torch
        from torch import nn

        gen = torch.Generator().manual_seed(0)
        w = self.WIDTHS
        module = nn.ModuleDict(
            {
                "stem": nn.Sequential(nn.Conv2d(3, w[0], 3, padding=1), nn.BatchNorm2d(w[0]), nn.ReLU()),
                "stages": nn.ModuleList(
                    [
                        nn.Sequential(nn.Conv2d(w[0], w[1], 3, stride=2, padding=1), nn.BatchNorm2d(w[1]), nn.ReLU()),
                        nn.Sequential(nn.Conv2d(w[1], w[2], 3, stride=2, padding=1), nn.BatchNorm2d(w[2]), nn.ReLU()),
                    ]
                ),
            }
        )
        with torch.no_grad():
            for p in module.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
            # Conv biases default to torch's global RNG: seed them too, so every load gives the same network.
            for m in module.modules():
                if isinstance(m, nn.Conv2d) and m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        if self.weights_kind() == "local":
            _load_local_state(self, module)
        return module

    def preprocess_item(self, item: Any, *, train: bool = False) -> torch.Tensor:
        """The item as a ``uint8`` CHW tensor at the input size (resized; cropped and flipped at random for
        training); :meth:`collate` scales and normalises the whole batch at once, the same numbers as per item at
        a fraction of the cost (a fake backbone must stay cheap next to the data it reads: torchvision is imported only
        when an image needs resizing or augmenting)."""
        import torch

        size = self.__dict__.get("_input_hw")
        if size is None:  # asked once: the spec is built anew on every access
            size = self.__dict__["_input_hw"] = list(self.spec.preprocess["input_size"][1:])
        if not train:
            x = _pixels(item)
            if list(x.shape[1:]) == size:
                return x
            from torchvision.transforms.v2 import functional as F

            resized: torch.Tensor = F.resize(x, size, antialias=True)
            return resized
        from torchvision.transforms import v2

        pipeline = self.__dict__.get("_train_pipeline")
        if pipeline is None:  # built once: a v2 pipeline costs more to build than to run on a small image
            pipeline = self.__dict__["_train_pipeline"] = v2.Compose(
                [v2.ToImage(), v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            )
        out: torch.Tensor = pipeline(item).as_subclass(torch.Tensor)
        return out

    def collate(self, processed: Sequence[Any]) -> torch.Tensor:
        """Stack the items; ``uint8`` ones are scaled to [0, 1] and normalised with the spec's mean and std (the
        arithmetic of torchvision's ``to_dtype(scale=True)`` and ``normalize``, in plain torch)."""
        import torch

        batch = torch.stack([torch.as_tensor(p) for p in processed])
        if batch.dtype != torch.uint8:
            return batch
        cfg = self.spec.preprocess
        mean = torch.as_tensor(cfg["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(cfg["std"], dtype=torch.float32).view(-1, 1, 1)
        return batch.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = cast("nn.ModuleDict", self.module)
        outs = [m["stem"](x)]
        for stage in m["stages"].children():
            outs.append(stage(outs[-1]))
        return outs

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3)) if self.pooling == "max" else x.mean(dim=(2, 3))

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self._pool(self._stages(batch)[-1]).float()

    def layer_names(self) -> list[str]:
        return [b.name for b in self.blocks()]

    def embed_layers(self, batch: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        outs = dict(zip(self.layer_names(), self._stages(batch), strict=True))
        return self._pool(outs["stages.1"]).float(), {n: self._pool(outs[n]).float() for n in layers}

    def blocks(self) -> list[Block]:
        return blocks_from_prefixes(
            self.module, [("stem", ["stem"]), ("stages.0", ["stages.0"]), ("stages.1", ["stages.1"])], "stages.1"
        )


def _pixels(item: Any) -> torch.Tensor:
    """An image as a ``uint8`` CHW tensor: an RGB PIL image through its bytes, anything else (arrays, tensors, other
    modes) through torchvision's ``to_image``; the same values either way."""
    import torch

    if getattr(item, "mode", None) == "RGB" and hasattr(item, "getbands") and item.width and item.height:
        w, h = item.size  # its bytes (HWC) viewed as CHW: a quarter cheaper than going through numpy
        return torch.frombuffer(bytearray(item.tobytes()), dtype=torch.uint8).as_strided((3, h, w), (1, 3 * w, 3))
    from torchvision.transforms.v2 import functional as F

    out: torch.Tensor = F.to_image(item).as_subclass(torch.Tensor)
    return out


class FakeTextBackbone(Backbone):
    """Character embeddings, two residual layers and attention-masked mean pooling."""

    modality = "text"
    VOCAB = 257
    DIM = 16

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(
            name=self.name,
            modality=self.modality,
            embed_dim=self.DIM,
            preprocess={"tokenizer": "utf8-bytes", "max_length": 64, **self.preprocess_overrides},
            pooling=self.pooling or "mean",
            weights=self.weights,
            source="tlkit.testing (seed 0)",
            license="Apache-2.0",
        )

    def build_module(self) -> nn.Module:
        import torch
        from torch import nn

        gen = torch.Generator().manual_seed(0)
        module = nn.ModuleDict(
            {
                "embeddings": nn.Embedding(self.VOCAB, self.DIM, padding_idx=0),
                "layer": nn.ModuleList([nn.Linear(self.DIM, self.DIM) for _ in range(2)]),
            }
        )
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        if self.weights_kind() == "local":
            _load_local_state(self, module)
        return module

    def preprocess_item(self, item: Any, *, train: bool = False) -> list[int]:
        max_length = int(self.spec.preprocess["max_length"])
        return [b + 1 for b in str(item).encode("utf-8")][:max_length] or [1]

    def sort_key(self, item: Any) -> int:
        return len(str(item))

    def collate(self, processed: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(p) for p in processed)
        ids = torch.zeros(len(processed), width, dtype=torch.long)
        mask = torch.zeros(len(processed), width, dtype=torch.long)
        for i, p in enumerate(processed):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _hidden(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        m = cast("nn.ModuleDict", self.module)
        h = m["embeddings"](batch["input_ids"])
        outs = [h]
        for layer in m["layer"].children():
            h = h + layer(h).tanh()
            outs.append(h)
        return outs

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1).to(h.dtype)
        return ((h * mask).sum(1) / mask.sum(1).clamp(min=1)).float()

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._pool(self._hidden(batch)[-1], batch["attention_mask"])

    def layer_names(self) -> list[str]:
        return ["embeddings", "layer.0", "layer.1"]

    def embed_layers(
        self, batch: dict[str, torch.Tensor], layers: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outs = dict(zip(self.layer_names(), self._hidden(batch), strict=True))
        mask = batch["attention_mask"]
        return self._pool(outs["layer.1"], mask), {n: self._pool(outs[n], mask) for n in layers}

    def blocks(self) -> list[Block]:
        return blocks_from_prefixes(
            self.module,
            [("embeddings", ["embeddings"]), ("layer.0", ["layer.0"]), ("layer.1", ["layer.1"])],
            "layer.1",
        )
