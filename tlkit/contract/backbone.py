"""The backbone contract that every backbone plugin implements.

A :class:`Backbone` is cheap to construct: ``__init__`` only stores options. Heavy imports and weight loading
happen in :meth:`Backbone.load`. Preprocessing is split into a per-item step (run in DataLoader workers) and a
collate step, so that images decode in parallel and text/audio pad per batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tlkit.canonical import canonical_json, json_default
from tlkit.errors import BadInputError, ConfigError, PluginError, TlkitError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: A model-ready batch: one tensor, or a mapping of named tensors (``input_ids``, ``attention_mask``, ...).
Batch = Any

WEIGHTS_PRETRAINED = "pretrained"
WEIGHTS_NONE = "none"

#: Keys the conformance kit requires in ``BackboneSpec.preprocess`` for each modality.
REQUIRED_PREPROCESS_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("input_size", "mean", "std", "interpolation"),
    "text": ("tokenizer", "max_length"),
    "audio": ("sample_rate",),
}

#: Preprocessing keys that belong to one modality. Overriding another modality's key (``input_size`` on a text
#: backbone) is refused by :meth:`Backbone.validate`, so it never reaches the spec or the fingerprint.
MODALITY_PREPROCESS_KEYS: dict[str, frozenset[str]] = {
    "image": frozenset({"input_size", "mean", "std", "interpolation", "crop_pct"}),
    "text": frozenset({"tokenizer", "max_length"}),
    "audio": frozenset({"sample_rate", "clip_seconds", "window_seconds", "hop_seconds", "min_seconds"}),
}

#: Preprocessing keys that have a CLI flag of the same name (``--input-size``): errors name them as ``{param}``.
_FLAGGED_KEYS = frozenset({"input_size"})


@dataclass(frozen=True)
class BackboneSpec:
    """Everything about a backbone that is data, not code.

    ``preprocess`` comes from the model's own pretrained configuration (timm ``pretrained_cfg``, torchvision
    ``Weights.transforms()``, HF processor and tokenizer configs) with any user overrides applied. Image: ``input_size``
    (C, H, W), ``mean``, ``std``, ``interpolation``, ``crop_pct``. Text: ``tokenizer``, ``max_length``. Audio:
    ``sample_rate``, ``clip_seconds``.
    """

    name: str
    modality: str
    embed_dim: int
    preprocess: dict[str, Any]
    pooling: str
    weights: str
    source: str = ""
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(asdict(self), default=json_default))
        return data


@dataclass(frozen=True)
class Block:
    """One named, separately freezable part of a backbone: the parameter names (relative to
    ``Backbone.module``) that belong to it. ``Backbone.blocks()`` lists them earliest first.

    ``reaches_output`` is ``False`` for a block whose output never reaches the pooled embedding (the BERT pooler
    under mean pooling, a classifier layer the backbone skips): it keeps its parameters (blocks cover every
    parameter) but training it changes nothing, so it is not offered for unfreezing (:meth:`Backbone.output_blocks`,
    ``tlkit blocks``) and not counted by ``last:N``. The conformance kit checks the flag: every block that reaches
    the output gets a non-zero gradient from the pooled embedding, and a block flagged ``False`` gets none.
    """

    name: str
    params: tuple[str, ...]
    reaches_output: bool = True

    def n_params(self, module: nn.Module) -> int:
        named = dict(module.named_parameters())
        return sum(named[p].numel() for p in self.params)


class Backbone(ABC):
    """Base class for backbones.

    Subclasses set :attr:`modality` and implement :meth:`build_module`, :attr:`spec`, :meth:`preprocess_item`,
    :meth:`embed` and :meth:`blocks`. Options every backbone accepts:

    - ``weights``: ``"pretrained"`` (the hub), ``"none"`` (random init), or a local file or directory;
    - ``preprocess``: overrides merged over the model's own preprocessing config;
    - ``pooling``: a pooling choice where the model offers several;
    - ``augment``: the training augmentation policy for :meth:`preprocess_item` with ``train=True``.
    """

    #: ``"image"``, ``"text"`` or ``"audio"``: the one place a backbone declares its modality. Registration reads it
    #: from the class, and the spec repeats it (``BackboneSpec(modality=self.modality, ...)``).
    modality: ClassVar[str]
    #: The plugin that offered this backbone (set by :func:`tlkit.get_backbone`; ``""`` for one built directly).
    plugin_name: str = ""

    def __init__(
        self,
        name: str,
        *,
        weights: str | os.PathLike[str] = WEIGHTS_PRETRAINED,
        preprocess: Mapping[str, Any] | None = None,
        pooling: str | None = None,
        augment: str | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.name = name
        self.weights = str(weights) if weights is not None else WEIGHTS_PRETRAINED
        self.preprocess_overrides = dict(preprocess or {})
        self.pooling = pooling
        self.augment = augment
        self.options = options
        self._module: nn.Module | None = None

    # -- construction -------------------------------------------------------------------------------------------
    def init_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this backbone (used by :meth:`replace` and run configs)."""
        return {
            "weights": self.weights,
            "preprocess": dict(self.preprocess_overrides),
            "pooling": self.pooling,
            "augment": self.augment,
            **self.options,
        }

    def replace(self, **changes: Any) -> Backbone:
        """A new, unloaded backbone with some options changed; ``preprocess`` overrides are merged. The new one is
        checked by :meth:`validate`."""
        kwargs = copy.deepcopy(self.init_kwargs())
        if "preprocess" in changes:
            kwargs["preprocess"] = {**kwargs.get("preprocess", {}), **dict(changes.pop("preprocess") or {})}
        kwargs.update(changes)
        new = type(self)(self.name, **kwargs)
        new.plugin_name = self.plugin_name
        return validated(new)

    def validate(self) -> None:
        """The validation point: check every option here, not in :meth:`preprocess_item` or :attr:`spec`.

        The host calls it in the main process right after construction (:func:`tlkit.get_backbone`,
        :meth:`replace`), before any data is read, so a bad option is a one-line error rather than every item
        skipped as "bad". Raise :class:`tlkit.plugin.ConfigError` naming the option; any other exception is turned
        into one naming the backbone and its plugin. Override it and call ``super().validate()`` first: the base
        refuses preprocessing overrides that belong to another modality (``input_size`` on a text backbone).
        Keep it cheap: no weights, no downloads.
        """
        own = MODALITY_PREPROCESS_KEYS.get(self.modality, frozenset())
        for key in self.preprocess_overrides:
            foreign = [m for m, keys in MODALITY_PREPROCESS_KEYS.items() if key in keys and key not in own]
            if foreign:
                what = "{param}" if key in _FLAGGED_KEYS else f"preprocess option {key!r}"
                raise ConfigError(
                    f"{what} does not apply to {self.name}: it is a {self.modality} backbone, and {key} is for "
                    f"{foreign[0]} backbones",
                    param=key if key in _FLAGGED_KEYS else None,
                )

    def conformance_variants(self) -> list[dict[str, Any]]:
        """Preprocessing overrides that are valid for this backbone and change its output (a different input size
        within the model's limits, another tokenizer the plugin knows). The conformance kit's
        ``fingerprint_tracks_preprocess`` check applies each one through :meth:`replace` and expects a different
        fingerprint. Return ``[]`` to use the kit's own choice (a smaller image size, a shorter ``max_length``, a
        shorter audio clip); override it when those are not valid for your model."""
        return []

    def weights_kind(self) -> str:
        """``"pretrained"``, ``"none"`` or ``"local"``."""
        if self.weights in (WEIGHTS_PRETRAINED, WEIGHTS_NONE):
            return self.weights
        return "local"

    def local_weights_path(self) -> Path:
        """The local weights file or directory; a clear error when it does not exist."""
        path = Path(self.weights).expanduser()
        if not path.exists():
            raise BadInputError(
                f"{{param}} {self.weights!r} for {self.name}: no such file or directory; "
                f"use pretrained, none, or an existing path",
                param="weights",
            )
        return path

    def check_weights_available(self) -> None:
        """Raise now, in one line, when :meth:`load` could not get the weights: a local path that does not exist,
        or published weights that are neither in a local cache nor downloadable (no network, ``HF_HUB_OFFLINE=1``;
        see :func:`tlkit.plugin.offline_reason`). Commands that will load the weights call it before they read any
        data or build the model. Keep it cheap: no model library import, no download. The base checks a local path;
        a plugin that downloads overrides it."""
        if self.weights_kind() == "local":
            self.local_weights_path()

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @abstractmethod
    def build_module(self) -> nn.Module:
        """Import the model library, build the network and load the weights (:meth:`weights_kind` says which).

        Called once, by :meth:`load`, which seeds the random number generator for ``weights="none"`` and puts the
        module in eval mode. Load local files with :func:`tlkit.plugin.load_state_dict_file`.
        """

    def load(self) -> Backbone:
        """Build and load the model (idempotent), in eval mode, on the CPU. Returns ``self``."""
        if self._module is None:
            if self.weights_kind() == WEIGHTS_NONE:
                # Random init is seeded, so every process (torchrun ranks, --shard jobs, a resumed run) builds the
                # same network that the fingerprint names.
                import torch

                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    module = self.build_module()
            else:
                module = self.build_module()
            module.eval()
            self._module = module
        return self

    @property
    def loaded(self) -> bool:
        return self._module is not None

    @property
    def module(self) -> nn.Module:
        """The backbone network (loads it on first access). ``blocks()`` names its parameters."""
        return self.load()._module  # type: ignore[return-value]

    # -- data ---------------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def spec(self) -> BackboneSpec:
        """The spec. May build the architecture (without weights) to learn sizes, but must not download."""

    # -- preprocessing ------------------------------------------------------------------------------------------
    @abstractmethod
    def preprocess_item(self, item: Any, *, train: bool = False) -> Any:
        """Turn one raw item (a PIL image, a string, an :class:`tlkit.plugin.AudioClip`) into model input.

        Runs in DataLoader worker processes, so it must be picklable and must not touch the network.
        ``train=True`` applies the training augmentation.
        """

    def collate(self, processed: Sequence[Any]) -> Batch:
        """Combine preprocessed items into a batch (default: ``torch.utils.data.default_collate``)."""
        from torch.utils.data import default_collate

        return default_collate(list(processed))

    def preprocess(self, items: Sequence[Any], *, train: bool = False) -> Batch:
        """Preprocess and collate raw items in one go."""
        return self.collate([self.preprocess_item(it, train=train) for it in items])

    def item_flags(self, processed: Any) -> tuple[str, ...]:
        """Notes about one preprocessed item for the run summary (``("truncated",)`` for text cut at max_length)."""
        return ()

    def sort_key(self, item: Any) -> int | None:
        """A length for bucketing raw items of variable size (text, audio); ``None`` for fixed-size inputs."""
        return None

    # -- forward ------------------------------------------------------------------------------------------------
    @abstractmethod
    def embed(self, batch: Batch) -> torch.Tensor:
        """The pooled embedding ``[N, D]`` of a batch (differentiable; the caller decides grad and precision)."""

    def layer_names(self) -> list[str]:
        """Block names whose pooled output :meth:`embed_layers` can return (default: none)."""
        return []

    def embed_layers(self, batch: Batch, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The final embedding plus each named layer's pooled output ``[N, D_b]``, from one forward pass."""
        if layers:
            raise TlkitError(f"backbone {self.name} does not offer per-layer embeddings")
        return self.embed(batch), {}

    # -- structure ----------------------------------------------------------------------------------------------
    @abstractmethod
    def blocks(self) -> list[Block]:
        """Named blocks, earliest first, covering every parameter of :attr:`module` exactly once."""

    def output_blocks(self) -> list[Block]:
        """The blocks whose output reaches the pooled embedding: those fine-tuning may unfreeze, earliest first."""
        return [b for b in self.blocks() if b.reaches_output]

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """Turn on gradient checkpointing where the model supports it; return whether it did."""
        return False

    # -- identity -----------------------------------------------------------------------------------------------
    def memo_inputs(self) -> dict[str, list[str]] | None:
        """What :attr:`spec` and :meth:`fingerprint` depend on besides the name, the options and the plugin's code,
        so that tlkit may keep them on disk and describe the backbone next time without building it (``tlkit
        backbones info``, the "up to date" check of a rerun): ``{"libraries": [import names of the model libraries
        it reads], "paths": [local files or folders it reads]}``.

        ``None`` (the default) when that cannot be said, for instance when they depend on the network (a hub
        model's current commit): they are then computed every time. :mod:`tlkit.host.memo` states the rule.
        """
        return None

    def weights_identity(self) -> str:
        """What identifies the weights: the hub source for ``pretrained``, a content hash for local files."""
        kind = self.weights_kind()
        if kind != "local":
            return f"{kind}:{self.spec.source}"
        return "sha256:" + hash_path(self.local_weights_path())

    def fingerprint_data(self) -> dict[str, Any]:
        """Everything that changes the output. Subclasses may add keys (a tokenizer config, say)."""
        spec = self.spec.to_dict()
        spec.pop("license", None)
        spec.pop("weights", None)
        return {"spec": spec, "weights": self.weights_identity(), "backbone_class": type(self).__qualname__}

    def fingerprint(self) -> str:
        """A stable hash of :meth:`fingerprint_data`: the cache key."""
        blob = canonical_json(self.fingerprint_data())
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, weights={self.weights!r})"


def validated(backbone: Backbone) -> Backbone:
    """Run ``backbone.validate()`` and return the backbone. A :class:`tlkit.errors.TlkitError` passes through (it
    is already a one-line message); any other exception becomes a :class:`ConfigError` naming the backbone and its
    plugin (the original is chained, so ``TLKIT_DEBUG=1`` shows its traceback)."""
    try:
        backbone.validate()
    except TlkitError:
        raise
    except Exception as exc:
        raise ConfigError(f"{_who(backbone)} refused its options: {type(exc).__name__}: {exc}") from exc
    return backbone


def _who(backbone: Backbone) -> str:
    plugin = backbone.plugin_name or type(backbone).__module__.split(".")[0]
    return f"backbone {backbone.name} (plugin {plugin})"


def check_first_output(backbone: Backbone, out: Any, n: int | None = None) -> None:
    """The runtime check of the contract on a run's first batch: ``embed`` returned a ``[n, spec.embed_dim]`` tensor
    (any number of rows when ``n`` is ``None``) and the spec's modality is the registered one (the class's). A
    :class:`PluginError` naming the plugin otherwise, raised before anything is written."""
    spec = backbone.spec
    if spec.modality != backbone.modality:
        raise PluginError(
            f"{_who(backbone)} is registered as {backbone.modality} but its spec says {spec.modality!r}; "
            f"the plugin must build BackboneSpec(modality=self.modality, ...)"
        )
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2 or shape[0] != (shape[0] if n is None else n) or shape[1] != spec.embed_dim:
        rows = "" if n is None else f" for {n} items"
        raise PluginError(
            f"{_who(backbone)} returned embeddings of shape {shape}{rows}, but its spec declares "
            f"embed_dim {spec.embed_dim}; the plugin's embed() or spec is wrong, nothing was written"
        )


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def hash_path(path: Path) -> str:
    """sha256 of a file, or of every file in a directory (names and contents), memoised on size and mtime."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        key = (str(f), st.st_size, st.st_mtime_ns)
        digest = _HASH_MEMO.get(key)
        if digest is None:
            fh = hashlib.sha256()
            with open(f, "rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    fh.update(chunk)
            digest = _HASH_MEMO[key] = fh.hexdigest()
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(digest.encode())
    return h.hexdigest()


def blocks_from_prefixes(module: nn.Module, groups: Sequence[tuple[str, Sequence[str]]], rest: str) -> list[Block]:
    """Build blocks from ``(block name, [parameter-name prefixes])`` pairs; unmatched parameters go to ``rest``.

    The first matching group wins, so list specific prefixes before general ones. A prefix matches a whole
    dotted component (``layer1`` matches ``layer1.0.conv1.weight``, not ``layer10``).
    """
    order = [name for name, _ in groups]
    if rest not in order:
        order.append(rest)
    members: dict[str, list[str]] = {name: [] for name in order}
    for pname, _ in module.named_parameters():
        target = rest
        for name, prefixes in groups:
            if any(pname == p or pname.startswith(p + ".") for p in prefixes):
                target = name
                break
        members[target].append(pname)
    return [Block(name, tuple(members[name])) for name in order if members[name]]


def blocks_from_children(module: nn.Module, min_trunk: int = 3) -> list[Block]:
    """A generic split for models without a known layout: one block per top-level child that has parameters. When
    exactly one child is a container (``nn.Sequential``/``ModuleList``/``ModuleDict``) of at least ``min_trunk``
    parameterised children, that child is the trunk and is split into its children (``features.0``,
    ``features.1``, ...); several such children (ShuffleNet's ``stage2`` ... ``stage4``) are stages, kept whole.

    Parameters held directly by ``module`` join the first block. Names are module paths, so they are stable.
    """
    from torch import nn

    def has_params(m: nn.Module) -> bool:
        return next(m.parameters(), None) is not None

    children = [(name, child) for name, child in module.named_children() if has_params(child)]
    trunks = [
        name
        for name, child in children
        if isinstance(child, nn.Sequential | nn.ModuleList | nn.ModuleDict)
        and sum(has_params(m) for m in child.children()) >= min_trunk
        and next(child.parameters(recurse=False), None) is None
    ]
    groups: list[tuple[str, list[str]]] = []
    for name, child in children:
        if len(trunks) == 1 and name == trunks[0]:
            groups += [(f"{name}.{sub}", [f"{name}.{sub}"]) for sub, m in child.named_children() if has_params(m)]
        else:
            groups.append((name, [name]))
    if not groups:
        return [Block("params", tuple(n for n, _ in module.named_parameters()))] if has_params(module) else []
    return blocks_from_prefixes(module, groups, rest=groups[0][0])


def build_shapes_only(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a network only to read its shapes and metadata (embedding width, config, parameter names).

    It is built on the meta device with weight initialisation skipped (no memory, milliseconds); a model whose
    constructor computes with tensor values (torchvision's RegNet) is built on the CPU instead.
    """
    import torch

    try:
        with torch.device("meta"), _skip_meta_init():
            return factory()
    except (NotImplementedError, RuntimeError):
        return factory()


#: In-place initialisers that only fill values; on meta tensors (no data) they can be skipped.
_INIT_OPS = frozenset(
    "uniform_ normal_ erfinv_ mul_ add_ sub_ div_ clamp_ clamp_min_ clamp_max_ fill_ zero_ copy_ exponential_ sqrt_ "
    "exp_ neg_ abs_ bernoulli_ random_ log_normal_ cauchy_ geometric_ orthogonal_ trunc_normal_".split()
)


@contextmanager
def _skip_meta_init() -> Iterator[None]:
    # Initialisation arithmetic cannot change shapes, and on the meta device it runs through slow Python
    # decompositions (a ViT's truncated-normal init alone takes a second).
    import torch
    from torch.overrides import TorchFunctionMode

    class _Skip(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if getattr(func, "__name__", "") in _INIT_OPS and args and getattr(args[0], "is_meta", False):
                return args[0]
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), _Skip():
        yield
