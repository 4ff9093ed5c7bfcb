"""The torchvision backbone: ``torchvision/<model>`` with weights given as an enum name, ``pretrained``, ``none`` or a
local file.

Preprocessing comes from the weights' own ``transforms()`` (for ``none`` and local files, from the model's DEFAULT
weights), which torchvision provides without downloading anything. The embedding is the penultimate layer: the
input of the final classifier, which is replaced by an identity.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tlkit.plugin import (
    BackboneSpec,
    BadInputError,
    Block,
    ConfigError,
    ImageBackbone,
    TlkitError,
    UnknownNameError,
    build_shapes_only,
    load_state_dict_file,
    offline_reason,
    parse_augment,
)
from tlkit_torchvision.naming import PREFIX, check_name, find_weights, looks_like_enum, unknown_weights, weights_enum

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tlkit_torchvision.blocks import Layout

PREPROCESS_KEYS = ("input_size", "resize_size", "mean", "std", "interpolation", "crop_pct")


class TorchvisionBackbone(ImageBackbone):
    """A torchvision classification model without its final classifier."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        if self.options:
            raise ConfigError(f"{name}: unknown option(s) {', '.join(sorted(self.options))}")
        if self.pooling not in (None, "default"):
            raise ConfigError(f"{name}: torchvision models have one pooling; drop pooling={self.pooling!r}")
        self._spec: BackboneSpec | None = None
        self._layout: Layout | None = None

    # -- names and weights ----------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.name.removeprefix(PREFIX)

    def weights_enum(self) -> Any:
        """The chosen weights enum member, or ``None`` for ``none`` and local files."""
        return find_weights(self.model_name, self.weights)

    def weights_kind(self) -> str:
        if self.weights == "none":
            return "none"
        if self.weights_enum() is not None:
            return "pretrained"
        return "local"

    def local_weights_path(self) -> Any:
        from pathlib import Path

        if not Path(self.weights).expanduser().exists() and looks_like_enum(self.weights):
            raise unknown_weights(self.model_name, self.weights)
        return super().local_weights_path()

    def memo_inputs(self) -> dict[str, list[str]] | None:
        """The spec and fingerprint come from torchvision's weight enums (keyed by the installed torchvision and
        torch) and, for a local weights file, from the file. Decided without importing torchvision: a weights
        value that names an existing path is keyed by that path, anything else (an enum name) by the version."""
        from pathlib import Path

        local = self.weights not in ("pretrained", "none") and Path(self.weights).expanduser().exists()
        return {"libraries": ["torchvision", "torch"], "paths": [self.weights] if local else []}

    def _preprocess_weights(self) -> Any:
        """Whose ``transforms()`` define preprocessing: the chosen weights, else the model's DEFAULT weights."""
        return self.weights_enum() or weights_enum(self.model_name).DEFAULT

    # -- spec -----------------------------------------------------------------------------------------------------
    def default_preprocess(self) -> dict[str, Any]:
        t = self._preprocess_weights().transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        return {
            "input_size": [3, crop, crop],
            "resize_size": resize,
            "mean": [float(v) for v in t.mean],
            "std": [float(v) for v in t.std],
            "interpolation": t.interpolation.value,
            "crop_pct": round(crop / resize, 4),
        }

    def validate(self) -> None:
        """Preprocessing overrides (keys and values) are checked here, before any data is read."""
        super().validate()
        if self.preprocess_overrides:
            self._preprocess_config()

    def _preprocess_config(self) -> dict[str, Any]:
        defaults = self.default_preprocess()
        over = dict(self.preprocess_overrides)
        unknown = sorted(set(over) - set(PREPROCESS_KEYS))
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown preprocess key(s) {', '.join(unknown)}; use {', '.join(PREPROCESS_KEYS)}"
            )
        if isinstance(over.get("input_size"), int):
            over["input_size"] = [3, over["input_size"], over["input_size"]]
        cfg = {**defaults, **{k: list(v) if isinstance(v, tuple) else v for k, v in over.items()}}
        if "resize_size" not in over and ("input_size" in over or "crop_pct" in over):
            # keep the weights' resize-to-crop ratio at a new size
            cfg["resize_size"] = int(round(min(cfg["input_size"][-2:]) / float(cfg["crop_pct"])))
        return cfg

    @property
    def spec(self) -> BackboneSpec:
        if self._spec is None:
            check_name(self.name)
            kind = self.weights_kind()
            weights = self.weights_enum()
            meta = build_shapes_only(lambda: self._headless(self._new_model(None)))
            self._spec = BackboneSpec(
                name=self.name,
                modality=self.modality,
                embed_dim=int(meta.embed_dim_),
                preprocess=self._preprocess_config(),
                pooling="default",
                weights=self.weights,
                source=(
                    weights.url
                    if kind == "pretrained"
                    else f"torchvision:{self.model_name} (random init)"
                    if kind == "none"
                    else str(self.local_weights_path().resolve())
                ),
                license=weights.meta.get("license") if weights is not None else None,
                extra={
                    "enum": str(weights) if weights is not None else "",
                    "transforms": str(self._preprocess_weights()),
                },
            )
        return self._spec

    # -- building -------------------------------------------------------------------------------------------------
    def _builder_kwargs(self, weights: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        size = self.preprocess_overrides.get("input_size")
        if weights is None and size is not None and PREFIX + "vit_" in self.name:
            side = size if isinstance(size, int) else size[-1]
            kwargs["image_size"] = int(side)  # a ViT's position embeddings are built for one size
        if weights is None and self.model_name in ("inception_v3", "googlenet"):
            if self.weights_kind() == "local":
                kwargs.update(transform_input=True, init_weights=False)  # as built for their published weights
            else:
                kwargs["init_weights"] = True  # torchvision's current default, stated (it warns otherwise)
        return kwargs

    def _new_model(self, weights: Any) -> nn.Module:
        from torchvision.models import get_model

        return get_model(self.model_name, weights=weights, **self._builder_kwargs(weights))

    def build_module(self) -> nn.Module:
        check_name(self.name)
        weights = self.weights_enum()
        if weights is not None:
            offline = offline_reason(weights.url)  # torch.hub reads its cache first; a miss needs the network
            try:
                model = self._new_model(weights)
            except Exception as exc:
                if offline is not None:
                    raise TlkitError(
                        f"{self.name}: weights {weights} are not in the local cache and cannot be downloaded: "
                        f"{offline}; pass {{param}} none (random init) or {{param}} PATH with a local weights file",
                        param="weights",
                    ) from exc
                reason = " ".join(str(exc).split())[:200]
                raise TlkitError(
                    f"{self.name}: could not load weights {weights} from {weights.url} ({type(exc).__name__}: "
                    f"{reason}); check the network, or pass {{param}} none or a local weights file",
                    param="weights",
                ) from exc
            return self._headless(model)
        if self.weights_kind() == "none":
            return self._headless(self._new_model(None))
        path = self.local_weights_path()
        if path.is_dir():
            raise BadInputError(f"{path}: torchvision weights must be one file (.pth, .pt, .bin or .safetensors)")
        model = self._headless(self._new_model(None))
        load_matching(model, path, self.model_name)
        return model

    def _headless(self, model: nn.Module) -> nn.Module:
        """Drop auxiliary heads and replace the final classifier with an identity; records ``embed_dim_``."""
        from torch import nn

        if getattr(model, "aux_logits", False):
            model.aux_logits = False
            for attr in ("AuxLogits", "aux1", "aux2"):
                if hasattr(model, attr):
                    setattr(model, attr, None)
        if self.model_name.startswith("squeezenet"):
            # SqueezeNet classifies with a 1x1 convolution; its penultimate output is the pooled feature map.
            dim = model.classifier[1].in_channels
            model.classifier = nn.AdaptiveAvgPool2d(1)
        else:
            name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
            dim = last.in_features
            model.set_submodule(name, nn.Identity())
        model.embed_dim_ = dim
        return model

    # -- preprocessing --------------------------------------------------------------------------------------------
    def make_transform(self, train: bool) -> Any:
        cfg = self.spec.preprocess
        return train_transform(cfg, self.augment) if train else eval_transform(cfg)

    # -- forward --------------------------------------------------------------------------------------------------
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.module(batch)
        return out[0] if isinstance(out, tuple) else out

    def _layout_info(self) -> Layout:
        if self._layout is None:
            from tlkit_torchvision.blocks import torchvision_layout

            self._layout = torchvision_layout(self.model_name, self.module)
        return self._layout

    def layer_names(self) -> list[str]:
        outputs = self._layout_info().outputs
        return [b.name for b in self.blocks() if b.name in outputs]

    def embed_layers(self, batch: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        if not layers:
            return self.embed(batch), {}
        info = self._layout_info()
        for name in layers:
            if name not in info.outputs:
                raise UnknownNameError("layer", name, self.layer_names(), hint=f"per-block outputs of {self.name}")
        with _capture(self.module, {n: info.outputs[n] for n in layers}) as seen:
            features = self.embed(batch)
        return features, {n: _pool(seen[n], info.layout) for n in layers}

    # -- structure ------------------------------------------------------------------------------------------------
    def blocks(self) -> list[Block]:
        return self._layout_info().blocks

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        return False  # torchvision models have no built-in switch


def load_matching(model: nn.Module, path: Any, model_name: str) -> None:
    """Load a local state dict strictly into the headless model; the file's classifier and auxiliary heads are
    dropped (the backbone does not use them), anything else that does not fit is an error naming the file."""
    state = load_state_dict_file(path)
    wanted = model.state_dict()
    state = {k: v for k, v in state.items() if k in wanted or not _is_head_key(k, model_name)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise BadInputError(
            f"{path}: these weights do not fit torchvision/{model_name} ({reason}); pass a state dict saved from "
            f"torchvision.models.{model_name}"
        ) from exc


def _is_head_key(key: str, model_name: str) -> bool:
    """Keys of parts the headless model no longer has: the final classifier and auxiliary heads."""
    heads = ("fc.", "classifier.", "heads.head.", "head.", "AuxLogits.", "aux1.", "aux2.")
    return key.startswith(heads)


def _pool(t: torch.Tensor, layout: str) -> torch.Tensor:
    if t.dim() == 4:
        return t.mean(dim=(1, 2)) if layout == "NHWC" else t.mean(dim=(2, 3))
    if t.dim() == 3:
        return t[:, 1:].mean(dim=1) if layout == "NLC" else t.mean(dim=1)
    return t.flatten(1)


@contextmanager
def _capture(module: nn.Module, wanted: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Forward hooks that keep the outputs of ``wanted`` (block -> module path) during one forward pass."""
    seen: dict[str, Any] = {}
    handles = []
    for block, path in wanted.items():

        def hook(_m: Any, _inp: Any, out: Any, block: str = block) -> None:
            seen[block] = out

        handles.append(module.get_submodule(path).register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


# -- transforms -----------------------------------------------------------------------------------------------------
def eval_transform(cfg: Mapping[str, Any]) -> Any:
    """torchvision's ``ImageClassification`` preset (what ``Weights.transforms()`` returns) for this config."""
    import torch
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    _, h, w = (int(v) for v in cfg["input_size"])
    interpolation = InterpolationMode(cfg["interpolation"])
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    resize = int(cfg["resize_size"])
    if h == w:
        return ImageClassification(
            crop_size=h, resize_size=resize, mean=mean, std=std, interpolation=interpolation, antialias=True
        )
    return T.Compose(
        [
            T.Resize(resize, interpolation=interpolation, antialias=True),
            T.CenterCrop((h, w)),
            T.PILToTensor(),
            T.ConvertImageDtype(torch.float),
            T.Normalize(mean, std),
        ]
    )


def train_transform(cfg: Mapping[str, Any], augment: str | Mapping[str, Any] | None) -> Any:
    """Random resized crop, flips, optional auto-augmentation and colour jitter, then the eval normalisation, for
    ``augment`` in tlkit's augmentation vocabulary (:func:`tlkit.plugin.parse_augment`)."""
    import torch
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    opts = parse_augment(augment)
    if opts is None:
        return eval_transform(cfg)
    _, h, w = (int(v) for v in cfg["input_size"])
    interpolation = InterpolationMode(cfg["interpolation"])
    steps: list[Any] = [
        T.RandomResizedCrop(
            (h, w),
            scale=tuple(opts.get("scale", (0.35, 1.0))),
            ratio=tuple(opts.get("ratio", (3 / 4, 4 / 3))),
            interpolation=interpolation,
            antialias=True,
        )
    ]
    if opts.get("hflip"):
        steps.append(T.RandomHorizontalFlip(opts["hflip"]))
    if opts.get("vflip"):
        steps.append(T.RandomVerticalFlip(opts["vflip"]))
    auto = opts.get("auto_augment")
    if auto:
        table = {
            "randaugment": T.RandAugment,
            "trivialaugment": T.TrivialAugmentWide,
            "autoaugment": T.AutoAugment,
            "augmix": T.AugMix,
        }
        steps.append(table[auto](interpolation=interpolation))
    elif opts.get("color_jitter"):
        j = float(opts["color_jitter"])
        steps.append(T.ColorJitter(j, j, j))
    steps += [T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))]
    if opts.get("re_prob"):
        steps.append(T.RandomErasing(float(opts["re_prob"])))
    return T.Compose(steps)
