"""The timm backbone: any ``timm/<architecture>[.<tag>]`` model as a tlkit :class:`~tlkit.plugin.Backbone`.

Everything model-specific comes from timm itself: preprocessing from ``resolve_model_data_config`` and
``create_transform``, the embedding from ``forward_features`` + ``forward_head(pre_logits=True)``, per-block
outputs from ``forward_intermediates``, blocks from ``group_matcher``. Weights load through timm's own
``pretrained_cfg`` machinery, so checkpoint filters (position-embedding resampling, format conversion) apply to
local files exactly as they do to hub weights.

Subclass it to ship a backbone with its own weights (see ``plugins/examples/tlkit-effnet-lite``): override
:meth:`TimmBackbone.timm_name` and :meth:`TimmBackbone.create_pretrained` (which may build the network with
:meth:`TimmBackbone.create_model`), and :meth:`TimmBackbone.pretrained_source`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.plugin import (
    WEIGHT_SUFFIXES,
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
    use_hub_cache_only,
)
from tlkit_timm.naming import PREFIX, check_name, pretrained_cfg, split_name
from tlkit_timm.transforms import data_config, eval_transform, merge_overrides, train_transform

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The weights file of a weights directory, in order of preference (as timm's own hub layout names them).
PREFERRED_FILES = ("model.safetensors", "pytorch_model.bin")
#: Options a timm backbone accepts beyond the common ones.
OPTIONS = ("model_kwargs",)


class TimmBackbone(ImageBackbone):
    """A timm image model, headless: ``embed`` gives its pooled pre-logits features.

    Options beyond the common ones: ``model_kwargs`` (a dict passed to ``timm.create_model``, such as
    ``{"drop_path_rate": 0.1}``). ``pooling`` becomes timm's ``global_pool`` (``avg``, ``max``, ``avgmax``, and
    ``token``/``avg``/``map`` for ViTs).
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        unknown = sorted(set(self.options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}; timm backbones take {OPTIONS}")
        self._spec: BackboneSpec | None = None
        self._blocks: list[Block] | None = None
        self._layers: list[tuple[int, str]] | None = None
        self._meta: nn.Module | None = None

    # -- what timm builds -----------------------------------------------------------------------------------------
    def timm_name(self) -> str:
        """The timm model name, ``arch`` or ``arch.tag``."""
        return self.name.removeprefix(PREFIX)

    def architecture(self) -> str:
        return split_name(self.timm_name())[0]

    def check_name(self) -> None:
        """Fail early, with timm's closest names, when the architecture or tag is unknown."""
        check_name(PREFIX + self.timm_name())

    def _model_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.options.get("model_kwargs") or {})
        if self.pooling is not None:
            if self.pooling in ("", "none"):
                raise ConfigError(f"{self.name}: pooling must produce one vector per image; use avg, max or token")
            kwargs["global_pool"] = self.pooling
        size = self._fixed_size_override()
        if size is not None:
            kwargs.setdefault("img_size", size)
        return kwargs

    def validate(self) -> None:
        """Unknown preprocessing keys are refused here; ``augment`` is checked by :class:`ImageBackbone`."""
        super().validate()
        if self.preprocess_overrides:
            merge_overrides({}, self.preprocess_overrides, self.name)

    def _fixed_size_override(self) -> tuple[int, int] | None:
        """A new ``img_size`` for models built for one input size (ViTs) when ``input_size`` is overridden; timm
        resamples the position embeddings of loaded weights to match."""
        size = self.preprocess_overrides.get("input_size")
        if size is None:
            return None
        from timm.models import get_pretrained_cfg

        cfg = self._local_dir_pretrained_cfg() or get_pretrained_cfg(self.timm_name())
        cfg = cfg if isinstance(cfg, dict) else (cfg.__dict__ if cfg is not None else {})
        if not cfg.get("fixed_input_size"):
            return None
        hw = tuple(int(v) for v in (size[-2:] if isinstance(size, list | tuple) else (size, size)))
        return None if hw == tuple(cfg.get("input_size", (3, 0, 0))[-2:]) else (hw[0], hw[1])

    def create_model(
        self,
        *,
        pretrained: bool,
        meta: bool = False,
        num_classes: int = 0,
        overlay: dict[str, Any] | None = None,
        model_name: str | None = None,
    ) -> nn.Module:
        """``timm.create_model`` with this backbone's options (pooling, ``model_kwargs``, a new input size).

        ``overlay`` is timm's ``pretrained_cfg_overlay`` and ``model_name`` replaces :meth:`timm_name`; ``meta=True``
        builds shapes only (no memory).
        """
        import timm

        kwargs = self._model_kwargs()

        def create() -> nn.Module:
            return timm.create_model(
                model_name or self.timm_name(),
                pretrained=pretrained,
                pretrained_cfg_overlay=overlay,
                num_classes=num_classes,
                **kwargs,
            )

        try:
            return build_shapes_only(create) if meta else create()
        except (TypeError, AssertionError, ValueError, KeyError) as exc:
            if self.pooling is not None or self.options.get("model_kwargs"):
                raise ConfigError(
                    f"{self.name}: timm rejected pooling={self.pooling!r} / model_kwargs "
                    f"({type(exc).__name__}: {exc}); see the model's global_pool choices"
                ) from exc
            raise

    # -- weights --------------------------------------------------------------------------------------------------
    def build_module(self) -> nn.Module:
        self.check_name()
        kind = self.weights_kind()
        if kind == "pretrained":
            return self.create_pretrained()
        if kind == "none":
            return self.create_model(pretrained=False)
        return self._create_local(self.local_weights_path())

    def download_source(self) -> str | None:
        """Where ``weights="pretrained"`` downloads from (``hf-hub:<repo id>`` or a URL), read from the registry index
        without importing timm; ``None`` when nothing is downloaded. A subclass that ships its own weights returns
        ``None``."""
        cfg = pretrained_cfg(self.timm_name())
        return str(cfg[3]) if cfg and cfg[3] else None

    def _offline(self, source: str | None) -> str | None:
        """Why ``source`` cannot be downloaded now (see :func:`tlkit.plugin.offline_reason`), else ``None``."""
        if source is None:
            return None
        return offline_reason() if source.startswith("hf-hub:") else offline_reason(source)

    def _cached(self, source: str) -> bool:
        """Whether the weights of ``source`` are in timm's local caches (the hub's, or torch.hub's for a URL)."""
        import os

        if source.startswith("hf-hub:"):
            from huggingface_hub import try_to_load_from_cache

            cfg = pretrained_cfg(self.timm_name()) or []
            names = [cfg[4]] if len(cfg) > 4 and cfg[4] else ["model.safetensors", "pytorch_model.bin"]
            repo = source.removeprefix("hf-hub:").split("@")[0]
            return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        torch_home = os.environ.get("TORCH_HOME") or os.path.join(cache, "torch")
        return os.path.isfile(os.path.join(torch_home, "hub", "checkpoints", os.path.basename(source.split("?")[0])))

    def _offline_error(self, source: str, offline: str) -> TlkitError:
        return TlkitError(
            f"{self.name}: its pretrained weights ({source}) are not in the local cache and cannot be downloaded: "
            f"{offline}; pass {{param}} none (random init), or {{param}} PATH with a weights file or a local model "
            f"directory (config.json + model.safetensors)",
            param="weights",
        )

    def check_weights_available(self) -> None:
        """Published weights must be cached, or downloadable now; decided without importing timm."""
        super().check_weights_available()
        source = self.download_source() if self.weights_kind() == "pretrained" else None
        if source is None or self._cached(source):
            return
        offline = self._offline(source)
        if offline is not None:
            raise self._offline_error(source, offline)

    def create_pretrained(self) -> nn.Module:
        """The model with its published weights: timm's hub path (``pretrained=True``). Without a network (or with
        ``HF_HUB_OFFLINE=1``) only timm's local cache is read, and a miss is one line at once, not a minute of
        retries."""
        source = self.pretrained_source()
        offline = self._offline(source if source.startswith(("hf-hub:", "http://", "https://")) else None)
        if offline is not None and source.startswith("hf-hub:"):
            use_hub_cache_only(offline)
        try:
            return self.create_model(pretrained=True)
        except ConfigError:
            raise
        except Exception as exc:
            if offline is not None:
                raise self._offline_error(source, offline) from exc
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TlkitError(
                f"{self.name}: could not load pretrained weights from {source} "
                f"({type(exc).__name__}: {reason}); check the network and HF_HUB_OFFLINE, or pass {{param}} none "
                f"or a local file or directory",
                param="weights",
            ) from exc

    def _create_local(self, path: Path) -> nn.Module:
        """Load a local file, or a directory's weights, through the one safe loader; timm's checkpoint filter
        (position-embedding resampling, format conversion) applies as it does to hub weights."""
        hf_dir = path if path.is_dir() and (path / "config.json").is_file() else None
        path = _weights_file(path) if path.is_dir() else path
        if path.suffix not in WEIGHT_SUFFIXES:
            raise BadInputError(f"{path}: unsupported weights file; use one of {', '.join(WEIGHT_SUFFIXES)}")
        state = load_state_dict_file(path, prefer_ema=True)
        # custom_load=False because a state dict never needs a model's own npz loader.
        overlay: dict[str, Any] = {"state_dict": state, "custom_load": False}
        if hf_dir is not None:
            cfg = self._local_dir_pretrained_cfg() or {}
            overlay["source"] = ""  # the state dict, not timm's own reading of the directory
            return self._load_checked(path, cfg.get("num_classes", 0), overlay, model_name=f"local-dir:{hf_dir}")
        # With the file's own number of classes timm loads strictly: a partial file fails loudly.
        overlay["num_classes"] = rows = classifier_rows(state, self._describe().pretrained_cfg.get("classifier"))
        return self._load_checked(path, rows, overlay)

    def _load_checked(
        self, path: Path, num_classes: int, overlay: dict[str, Any], model_name: str | None = None
    ) -> nn.Module:
        try:
            model = self.create_model(pretrained=True, num_classes=num_classes, overlay=overlay, model_name=model_name)
        except ConfigError:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300]
            raise BadInputError(
                f"{path}: these weights do not fit {self.architecture()} ({type(exc).__name__}: {reason}); "
                f"pass a state dict saved from timm/{self.architecture()}"
            ) from exc
        model.pretrained_cfg.pop("state_dict", None)  # timm keeps its config; the tensors now live in the model
        if num_classes:
            strip_classifier(model, self.pooling)
        return model

    def _local_dir_pretrained_cfg(self) -> dict[str, Any] | None:
        """The ``pretrained_cfg`` of an HF-layout weights directory (its ``config.json``), else ``None``."""
        if self.weights_kind() != "local":
            return None
        path = Path(self.weights).expanduser()
        config = path / "config.json"
        if not config.is_file():
            return None
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{config}: unreadable model config ({exc})") from exc
        arch = data.get("architecture")
        if arch and arch != self.architecture():
            raise BadInputError(
                f"{path}: config.json describes {arch}, not {self.architecture()}; use timm/{arch} or another directory"
            )
        cfg = dict(data.get("pretrained_cfg") or {})
        cfg.setdefault("num_classes", data.get("num_classes", 0))
        return cfg

    def memo_inputs(self) -> dict[str, list[str]] | None:
        """The spec and fingerprint come from timm's registry (keyed by the installed timm and torch) and, for local
        weights, from the file or folder."""
        paths = [str(self.local_weights_path())] if self.weights_kind() == "local" else []
        return {"libraries": ["timm", "torch"], "paths": paths}

    def pretrained_source(self) -> str:
        """Where ``weights="pretrained"`` comes from, as the spec's ``source`` shows it."""
        cfg = self._describe().pretrained_cfg
        if cfg.get("hf_hub_id"):
            return f"hf-hub:{cfg['hf_hub_id']}"
        return str(cfg.get("url") or f"timm:{self.timm_name()}")

    # -- spec -----------------------------------------------------------------------------------------------------
    def _describe(self) -> nn.Module:
        """The architecture on the meta device (no weights, no memory, no download): sizes and pretrained_cfg."""
        if self._meta is None:
            self.check_name()
            local_dir = self.weights_kind() == "local" and self._local_dir_pretrained_cfg() is not None
            name = f"local-dir:{Path(self.weights).expanduser()}" if local_dir else None
            self._meta = self.create_model(pretrained=False, meta=True, model_name=name)
        return self._meta

    def default_preprocess(self) -> dict[str, Any]:
        """The model's own preprocessing (``timm.data.resolve_model_data_config``). Subclasses may refine it."""
        from timm.data import resolve_model_data_config

        return data_config(resolve_model_data_config(self._describe()))

    @property
    def spec(self) -> BackboneSpec:
        if self._spec is None:
            model = self._describe()
            preprocess = merge_overrides(self.default_preprocess(), self.preprocess_overrides, self.name)
            cfg = model.pretrained_cfg
            kind = self.weights_kind()
            arch, tag = split_name(self.timm_name())
            self._spec = BackboneSpec(
                name=self.name,
                modality=self.modality,
                embed_dim=embed_dim(model, preprocess["input_size"]),
                preprocess=preprocess,
                pooling=pool_name(model),
                weights=self.weights,
                source=self._source(kind),
                license=cfg.get("license") if kind != "local" or self._local_dir_pretrained_cfg() else None,
                extra={"architecture": arch, "tag": tag or cfg.get("tag") or ""},
            )
        return self._spec

    def _source(self, kind: str) -> str:
        if kind == "pretrained":
            return self.pretrained_source()
        if kind == "none":
            return f"timm:{self.architecture()} (random init)"
        return str(Path(self.weights).expanduser().resolve())

    # -- preprocessing --------------------------------------------------------------------------------------------
    def make_transform(self, train: bool) -> Any:
        cfg = self.spec.preprocess
        return train_transform(cfg, self.augment) if train else eval_transform(cfg)

    # -- forward --------------------------------------------------------------------------------------------------
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        m = self.module
        return m.forward_head(m.forward_features(batch), pre_logits=True)

    def _feature_layers(self) -> list[tuple[int, str]]:
        if self._layers is None:
            from tlkit_timm.blocks import feature_layers

            self._layers = feature_layers(self.module, self.blocks())
        return self._layers

    def layer_names(self) -> list[str]:
        return [name for _, name in self._feature_layers()]

    def embed_layers(self, batch: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        if not layers:
            return self.embed(batch), {}
        index = {name: i for i, name in self._feature_layers()}
        for name in layers:
            if name not in index:
                raise UnknownNameError("layer", name, index, hint=f"per-block outputs of {self.name}")
        m = self.module
        wanted = sorted({index[n] for n in layers})
        final, inter = m.forward_intermediates(batch, indices=wanted, norm=False, output_fmt="NCHW")
        by_index = dict(zip(wanted, inter, strict=True))
        pooled = {n: by_index[index[n]].mean(dim=(2, 3)) for n in layers}
        return m.forward_head(final, pre_logits=True), pooled

    # -- structure ------------------------------------------------------------------------------------------------
    def blocks(self) -> list[Block]:
        if self._blocks is None:
            from tlkit_timm.blocks import timm_blocks

            self._blocks = timm_blocks(self.module)
        return self._blocks

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        try:
            self.module.set_grad_checkpointing(enable)
        except (AttributeError, NotImplementedError, AssertionError):
            return False
        return True

    def __getstate__(self) -> dict[str, Any]:
        # The meta-device model describes shapes only; it is rebuilt on demand rather than pickled to workers.
        state = dict(self.__dict__)
        state["_meta"] = None
        return state


def embed_dim(model: nn.Module, input_size: Sequence[int]) -> int:
    """The pooled pre-logits width: timm's ``head_hidden_size`` (it includes the pooling's width multiplier), else
    a shape-only forward on the meta device, else ``num_features``."""
    import torch

    width = getattr(model, "head_hidden_size", None)
    if width:
        return int(width)
    try:
        with torch.no_grad():
            x = torch.empty(1, *[int(v) for v in input_size], device="meta")
            out = model.forward_head(model.forward_features(x), pre_logits=True)
        if out.dim() == 2:
            return int(out.shape[1])
    except Exception:  # noqa: BLE001 - some ops have no meta kernel; fall back to what timm declares
        pass
    return int(model.num_features)


def pool_name(model: nn.Module) -> str:
    """The global pooling the model uses (``avg``, ``token``, ...)."""
    for owner in (model, getattr(model, "head", None)):
        pool = getattr(owner, "global_pool", None)
        if isinstance(pool, str) and pool:
            return pool
        pool_type = getattr(pool, "pool_type", None)
        if pool_type:
            return str(pool_type)
    return "avg"


def strip_classifier(model: nn.Module, pooling: str | None) -> None:
    """Drop the classifier after a strict load, keeping the pooling."""
    pool = pooling or pool_name(model)
    try:
        model.reset_classifier(0, pool)
    except TypeError:
        model.reset_classifier(0)


def classifier_rows(state: Mapping[str, Any], classifier: str | Sequence[str] | None) -> int:
    """How many classes the state dict's classifier has (0 when it has none)."""
    names = [classifier] if isinstance(classifier, str) else list(classifier or ())
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and len(weight.shape):
            return int(weight.shape[0])
    return 0


def _weights_file(directory: Path) -> Path:
    """The weights file of a directory: a preferred name, else its only weights file."""
    for name in PREFERRED_FILES:
        if (directory / name).is_file():
            return directory / name
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        raise BadInputError(
            f"{directory}: expected an HF-layout model directory (config.json + model.safetensors) or a single "
            f"weights file ({', '.join(WEIGHT_SUFFIXES)}); found {len(files)} weight files"
        )
    return files[0]
