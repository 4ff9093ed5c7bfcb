"""Parameter-efficient fine-tuning: ``peft`` adapters (LoRA and friends) on the blocks an unfreeze spec names.

``adapter="lora:r=8,alpha=16,dropout=0.05"`` (``--adapter``) turns a run's unfreeze spec, schedule or gradual plan
from "train these blocks" into "train adapters in these blocks": the blocks' own weights stay frozen, and low-rank
(or other ``peft``) adapters injected into their layers train instead, with the head. Everything else is the
ordinary engine: phases add adapter blocks top-down, the adapters of a block get that block's learning rate (the head
its own), the BatchNorm policy applies to BatchNorm layers in adapter blocks, checkpoints hold the adapters and
resume, DDP synchronises them.

Which layers get adapters (``targets``): in the chosen blocks, every ``Linear`` layer (attention and MLP projections
of a transformer, the MLPs of a ViT) and the dense (``groups=1``, never depthwise) convolutions: the pointwise (1×1)
ones, or every one in a network whose dense convolutions are mostly k×k (ResNet, VGG, an audio feature encoder).
``targets=GLOB+GLOB`` chooses instead, matched like ``peft``'s ``target_modules`` (a module name or its suffix:
``targets=query+value``). A chosen block without a target layer (an embedding block) trains nothing.

The methods, with their options (``peft``'s names in brackets):

- ``lora``: ``r`` (8), ``alpha`` (16, ``lora_alpha``), ``dropout`` (0.05, ``lora_dropout``), ``rslora`` (false,
  ``use_rslora``), ``dora`` (false, ``use_dora``), ``targets``;
- ``ia3``: ``targets``, ``ff`` (the feed-forward layers whose input is scaled; default: the targets that narrow,
  like an MLP's down projection);
- ``loha`` and ``lokr``: ``r`` (8), ``alpha`` (8), ``targets``.

Every method starts as the identity (LoRA's B is zero), so the model a run starts from is the base model with its
head, and a block's adapters change nothing until the block's phase trains them.

A run's files are data: ``adapter.safetensors`` (the adapter tensors, plus the BatchNorm tensors of adapter blocks,
keyed by their names in the backbone module) and ``adapter.json`` (the method, its options, the exact target layers,
and the base backbone's fingerprint and weights digest). Loading reads the JSON through the allow-list of methods and
options above, builds the ``peft`` config itself (no class named by a file is ever imported), checks that the base
is the one the adapters were trained on, injects and loads the tensors strictly.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tlkit.errors import BadInputError, ConfigError, NotInstalled

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tlkit.contract.backbone import Block

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
ADAPTER_FORMAT = "tlkit-adapter"
ADAPTER_VERSION = 1
#: peft's name for the one adapter a run trains.
ADAPTER_NAME = "default"
#: The adapters' learning rate is the head's × this unless ``backbone_lr_ratio``/``backbone_lr`` says otherwise
#: (LoRA trains at rates near the head's: Hu et al. 2021 fine-tune RoBERTa's adapters at 4e-4 to 5e-4).
DEFAULT_ADAPTER_LR_RATIO = 0.5


@dataclass(frozen=True)
class _Option:
    kind: str  # "int", "float", "bool" or "globs"
    default: Any
    low: float | None = None  # inclusive lower bound (numbers)
    below: float | None = None  # exclusive upper bound (numbers)
    above_zero: bool = False


_TARGETS = _Option("globs", ())
METHODS: dict[str, dict[str, _Option]] = {
    "lora": {
        "r": _Option("int", 8, low=1),
        "alpha": _Option("float", 16.0, above_zero=True),
        "dropout": _Option("float", 0.05, low=0.0, below=1.0),
        "rslora": _Option("bool", False),
        "dora": _Option("bool", False),
        "targets": _TARGETS,
    },
    "ia3": {"targets": _TARGETS, "ff": _Option("globs", ())},
    "loha": {"r": _Option("int", 8, low=1), "alpha": _Option("float", 8.0, above_zero=True), "targets": _TARGETS},
    "lokr": {"r": _Option("int", 8, low=1), "alpha": _Option("float", 8.0, above_zero=True), "targets": _TARGETS},
}
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _methods_help() -> str:
    return "; ".join(f"{m}[:{','.join(f'{k}=…' for k in opts)}]" for m, opts in METHODS.items())


@dataclass(frozen=True)
class AdapterSpec:
    """A validated adapter method and its options (every option present, defaults filled in)."""

    method: str
    options: tuple[tuple[str, Any], ...]

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.opts.get("targets", ()))

    def describe(self) -> str:
        """The spec in ``--adapter`` syntax, every option written out."""
        parts = []
        for key, value in self.options:
            if isinstance(value, tuple):
                if value:
                    parts.append(f"{key}={'+'.join(value)}")
            elif isinstance(value, bool):
                parts.append(f"{key}={'true' if value else 'false'}")
            else:
                parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        return self.method + (":" + ",".join(parts) if parts else "")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}}


def _value(method: str, key: str, option: _Option, raw: Any) -> Any:
    """One option's value from text (``--adapter``) or JSON (``adapter.json``), checked."""
    bad = ConfigError(f"{{param}} {method}: {key}={raw!r} is not a valid {option.kind}", param="adapter")
    if option.kind == "globs":
        items = raw.split("+") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(s, str) and s.strip() for s in items):
            raise bad
        return tuple(s.strip() for s in items)
    if option.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise bad
    try:
        if isinstance(raw, bool):
            raise ValueError
        number: float = int(raw) if option.kind == "int" else float(raw)
        if option.kind == "int" and isinstance(raw, float | str) and float(raw) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise bad from None
    if number != number or (option.low is not None and number < option.low):  # NaN, or below the bound
        raise ConfigError(f"{{param}} {method}: {key} must be at least {option.low:g}, not {raw}", param="adapter")
    if option.below is not None and number >= option.below:
        raise ConfigError(f"{{param}} {method}: {key} must be below {option.below:g}, not {raw}", param="adapter")
    if option.above_zero and not number > 0:
        raise ConfigError(f"{{param}} {method}: {key} must be above 0, not {raw}", param="adapter")
    return number


def adapter_spec(method: str, values: Mapping[str, Any]) -> AdapterSpec:
    """A spec from a method name and option values (text or JSON), refusing unknown methods and options."""
    if method not in METHODS:
        raise ConfigError(
            f"{{param}}: unknown adapter method {method!r}; use one of {', '.join(METHODS)} (or none)", param="adapter"
        )
    known = METHODS[method]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{{param}} {method}: unknown option(s) {', '.join(unknown)}; {method} takes {', '.join(known)}",
            param="adapter",
        )
    options = {k: _value(method, k, o, values[k]) if k in values else o.default for k, o in known.items()}
    return AdapterSpec(method, tuple(sorted(options.items())))


def parse_adapter(text: str | None) -> AdapterSpec | None:
    """``"lora:r=8,alpha=16,dropout=0.05,targets=query+value"`` → an :class:`AdapterSpec`; ``None``, ``""`` or
    ``"none"`` → ``None``. Needs no ``peft`` (used to check options before anything loads)."""
    if text is None or not text.strip() or text.strip().lower() == "none":
        return None
    method, _, rest = text.strip().partition(":")
    values: dict[str, str] = {}
    for part in rest.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"{{param}} {text!r}: {part.strip()!r} is not KEY=VALUE; write e.g. lora:r=8,alpha=16 "
                f"({_methods_help()})",
                param="adapter",
            )
        values[key.strip().lower()] = value.strip()
    return adapter_spec(method.strip().lower(), values)


# -- choosing the layers -------------------------------------------------------------------------------------------
def _layers(module: nn.Module, owner: Mapping[str, str], chosen: set[str]) -> list[tuple[str, nn.Module, str]]:
    """Linear and dense convolution layers whose weight belongs to a chosen block: (name, layer, block)."""
    from torch import nn

    out = []
    for name, layer in module.named_modules():
        if type(layer) not in (nn.Linear, nn.Conv1d, nn.Conv2d) or getattr(layer, "groups", 1) != 1:
            continue
        block = owner.get(f"{name}.weight")
        if block in chosen:
            out.append((name, layer, block))
    return out


def _matches(name: str, pattern: str) -> bool:
    """``peft``'s ``target_modules`` rule (the name, or a suffix after a dot), with globs."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def select_targets(
    module: nn.Module, blocks: Sequence[Block], chosen: Sequence[str], patterns: Sequence[str] = ()
) -> list[str]:
    """The names of the layers of the ``chosen`` blocks that get adapters (see the module doc for the default)."""
    owner = {p: b.name for b in blocks for p in b.params}
    layers = _layers(module, owner, set(chosen))
    if patterns:
        for pattern in patterns:
            if not any(_matches(name, pattern) for name, _, _ in layers):
                examples = ", ".join(name for name, _, _ in layers[:4]) or "none"
                raise ConfigError(
                    f"{{param}} targets={pattern!r} matches no Linear or dense convolution layer in the blocks "
                    f"{', '.join(chosen)} (e.g. {examples}); see `tlkit blocks BACKBONE --adapter …`",
                    param="adapter",
                )
        return [name for name, _, _ in layers if any(_matches(name, p) for p in patterns)]
    convs = [(name, _weight(layer)) for name, layer, _ in layers if not _is_linear(layer)]
    pointwise = {n: w.numel() for n, w in convs if all(k == 1 for k in w.shape[2:])}  # kernel 1 (×1)
    wide = sum(w.numel() for _, w in convs) - sum(pointwise.values())
    keep = {n for n, _ in convs} if wide > sum(pointwise.values()) else set(pointwise)
    return [name for name, layer, _ in layers if _is_linear(layer) or name in keep]


def _is_linear(layer: nn.Module) -> bool:
    from torch import nn

    return isinstance(layer, nn.Linear)


def _weight(layer: nn.Module) -> torch.Tensor:
    """A Linear or convolution layer's weight: ``[out, in]`` or ``[out, in, k…]``."""
    return cast("torch.Tensor", layer.weight)


def _narrows(layer: nn.Module) -> bool:
    """A layer with fewer outputs than inputs (an MLP's down projection)."""
    shape = _weight(layer).shape
    return int(shape[1]) > int(shape[0])


def select_feedforward(module: nn.Module, targets: Sequence[str], patterns: Sequence[str] = ()) -> list[str]:
    """IA3's feed-forward layers among ``targets``: those matching ``patterns``, else those that narrow."""
    named = dict(module.named_modules())
    if patterns:
        return [t for t in targets if any(_matches(t, p) for p in patterns)]
    return [t for t in targets if _narrows(named[t])]


# -- the peft side -------------------------------------------------------------------------------------------------
def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise NotInstalled("peft", extra="peft", purpose="adapters (--adapter)") from exc
    return peft


def _exactly(names: Iterable[str]) -> str:
    """A ``target_modules`` regex matching exactly these module names (``peft`` full-matches a string)."""
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def peft_config(spec: AdapterSpec, targets: Sequence[str], feedforward: Sequence[str] = ()) -> tuple[Any, Any]:
    """The ``peft`` config and tuner class for ``spec`` on exactly ``targets``, built from the allow-listed options
    alone."""
    peft = _peft()
    from peft.tuners import IA3Model, LoHaModel, LoKrModel, LoraModel

    o, modules = spec.opts, _exactly(targets)
    if spec.method == "lora":
        config = peft.LoraConfig(
            r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"], use_rslora=o["rslora"], use_dora=o["dora"],
            target_modules=modules, bias="none",
        )  # fmt: skip
        return config, LoraModel
    if spec.method == "ia3":
        ff = _exactly(feedforward) if feedforward else "^$"
        return peft.IA3Config(target_modules=modules, feedforward_modules=ff), IA3Model
    cls = peft.LoHaConfig if spec.method == "loha" else peft.LoKrConfig
    return cls(r=o["r"], alpha=o["alpha"], target_modules=modules), (LoHaModel if spec.method == "loha" else LoKrModel)


def base_digest(module: nn.Module) -> str:
    """sha256 of every tensor of the base module (names, dtypes, shapes and bytes): what the adapters were trained
    on, checked again wherever they are loaded."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Adapters:
    """The adapters injected into one backbone module. The tensors live in the module; this keeps what names them.

    ``blocks``: the backbone's blocks as fine-tuning sees them with adapters (each block's adapter parameters and
    its BatchNorm parameters; the frozen base weights belong to none). ``block_names``: the blocks that got
    adapters. ``keys``: the adapter tensors' names in the module; ``extra``: the BatchNorm tensors of adapter blocks,
    saved with them. ``tuner``: the ``peft`` tuner, for :meth:`merge`.
    """

    spec: AdapterSpec
    targets: list[str]
    feedforward: list[str]
    blocks: list[Block]
    block_names: list[str]
    keys: list[str]
    extra: list[str]
    base_params: dict[str, int]
    adapter_params: dict[str, int]
    digest: str
    tuner: Any = field(repr=False, default=None)
    #: The base backbone's name, weights and fingerprint (set by whoever knows them: the engine, the loader).
    base: dict[str, Any] = field(default_factory=dict)

    @property
    def state_keys(self) -> list[str]:
        """The backbone tensors a run saves: the adapters and the BatchNorm tensors of adapter blocks."""
        return [*self.keys, *self.extra]

    def record(self) -> dict[str, Any]:
        """What ``config.json`` and ``adapter.json`` record (plain data)."""
        return {
            **self.spec.to_dict(),
            "spec": self.spec.describe(),
            "targets": list(self.targets),
            "feedforward": list(self.feedforward),
            "blocks": list(self.block_names),
            "extra": list(self.extra),
            "base_digest": self.digest,
            "adapter_params": sum(self.adapter_params.values()),
            "base_params": sum(self.base_params.values()),
            "base": {k: self.base.get(k) for k in ("name", "weights", "fingerprint")},
        }

    def merge(self) -> None:
        """Fold the adapters into the base weights (``peft``'s ``merge_and_unload``): the module is the base
        architecture again, with merged weights."""
        if self.tuner is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.tuner.merge_and_unload()
            self.tuner = None


def attach_adapters(
    module: nn.Module,
    blocks: Sequence[Block],
    spec: AdapterSpec,
    chosen: Sequence[str],
    *,
    seed: int = 0,
    targets: Sequence[str] | None = None,
    feedforward: Sequence[str] | None = None,
) -> Adapters:
    """Inject ``spec``'s adapters into ``module`` (in place) on the layers of the ``chosen`` blocks, or on exactly
    ``targets``. Adapter initialisation draws from ``seed`` alone (every rank, every resume builds the same)."""
    import torch

    from tlkit.contract.backbone import Block
    from tlkit.finetuning.bn import batchnorm_layers, bn_block_map

    if not chosen:
        raise ConfigError(
            "{adapter} trains adapters in the blocks {unfreeze} names, and it names none; give e.g. all or last:2",
            params=("adapter", "unfreeze"),
        )
    digest = base_digest(module)
    base_params = {b.name: b.n_params(module) for b in blocks}
    owner = {p: b.name for b in blocks for p in b.params}
    if targets is None:
        targets = select_targets(module, blocks, chosen, spec.targets)
    if not targets:
        raise ConfigError(
            f"{{adapter}}: the blocks {', '.join(chosen)} have no Linear or dense convolution layer to adapt; "
            f"choose other blocks with {{unfreeze}}, or give targets=",
            params=("adapter", "unfreeze"),
        )
    if feedforward is None:
        feedforward = select_feedforward(module, targets, spec.opts.get("ff", ())) if spec.method == "ia3" else []
    target_block = {t: owner[f"{t}.weight"] for t in targets}
    bn_owner = bn_block_map(module, blocks)
    before = {id(v) for v in module.state_dict(keep_vars=True).values()}
    config, tuner_cls = peft_config(spec, targets, feedforward)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        tuner = tuner_cls(module, config, ADAPTER_NAME)
    keys = [k for k, v in module.state_dict(keep_vars=True).items() if id(v) not in before]
    params = {n for n, _ in module.named_parameters()}
    in_block: dict[str, list[str]] = {b.name: [] for b in blocks}
    adapter_params = dict.fromkeys(in_block, 0)
    named = dict(module.named_parameters())
    for key in keys:
        target = max((t for t in targets if key.startswith(t + ".")), key=len, default=None)
        if target is not None and key in params:
            in_block[target_block[target]].append(key)
            adapter_params[target_block[target]] += named[key].numel()
    adapted = sorted(set(target_block.values()), key=[b.name for b in blocks].index)
    extra: list[str] = []
    for name, layer in batchnorm_layers(module):
        block = bn_owner.get(name)
        if block is None:
            continue
        in_block[block] += [f"{name}.{k}" for k, _ in layer.named_parameters(recurse=False)]
        if block in adapted:
            extra += [f"{name}.{k}" for k in layer.state_dict()]
    new_blocks = [Block(b.name, tuple(in_block[b.name]), b.reaches_output) for b in blocks]
    return Adapters(
        spec, list(targets), list(feedforward), new_blocks, adapted, keys, extra, base_params, adapter_params, digest,
        tuner,
    )  # fmt: skip


# -- files ---------------------------------------------------------------------------------------------------------
def save_adapter_files(run_dir: Path, adapters: Adapters, backbone: nn.Module) -> None:
    """``adapter.safetensors`` (the adapters and the BatchNorm tensors of adapter blocks) and ``adapter.json``."""
    from tlkit.runs.rundir import save_tensors, write_json

    state = backbone.state_dict()
    save_tensors(
        run_dir / ADAPTER_WEIGHTS, {k: state[k] for k in adapters.state_keys}, metadata={"format": ADAPTER_FORMAT}
    )
    write_json(run_dir / ADAPTER_CONFIG, {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, **adapters.record()})


def read_adapter_config(run_dir: Path) -> dict[str, Any]:
    """``adapter.json``, checked field by field against the allow-list (one-line errors)."""
    path = run_dir / ADAPTER_CONFIG
    fix = "copy the run directory again, or rerun tlkit finetune"
    if not path.is_file():
        raise BadInputError(f"{path}: missing; the run trained adapters and needs its adapter files; {fix}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict) or data.get("format") != ADAPTER_FORMAT:
        raise BadInputError(f"{path}: not a tlkit adapter config; {fix}")
    if not isinstance(data.get("version"), int) or data["version"] > ADAPTER_VERSION:
        raise BadInputError(f"{path}: adapter format {data.get('version')!r} is newer than this tlkit; upgrade tlkit")
    for key in ("targets", "feedforward", "blocks", "extra"):
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInputError(f"{path}: {key!r} must be a list of names; {fix}")
    if not isinstance(data.get("options"), dict) or not isinstance(data.get("method"), str):
        raise BadInputError(f"{path}: 'method' and 'options' are missing; {fix}")
    try:
        data["adapter_spec"] = adapter_spec(data["method"], data["options"])
    except ConfigError as exc:
        raise BadInputError(f"{path}: {exc}; {fix}") from exc
    if not set(data["feedforward"]) <= set(data["targets"]) or not data["targets"]:
        raise BadInputError(f"{path}: the feed-forward layers must be among the targets, and targets not empty; {fix}")
    return data


def load_adapters(run_dir: Path, module: nn.Module, blocks: Sequence[Block], base: Mapping[str, Any]) -> Adapters:
    """Inject the adapters a run recorded into ``module`` (its base backbone, checked by digest) and load them."""
    from tlkit.runs.rundir import load_tensors

    record = read_adapter_config(run_dir)
    path = run_dir / ADAPTER_CONFIG
    recorded = dict(record.get("base") or {})
    if recorded.get("fingerprint") != base.get("fingerprint"):
        raise BadInputError(
            f"{path}: the adapters were trained on a base with fingerprint {recorded.get('fingerprint')}, not "
            f"{base.get('fingerprint')} ({base.get('name')}); load them onto the backbone they were trained on"
        )
    named = dict(module.named_modules())
    supported = ("Linear", "Conv1d", "Conv2d")
    for target in record["targets"]:
        if type(named.get(target)).__name__ not in supported:
            raise BadInputError(f"{path}: target {target!r} is not a Linear or convolution layer of {base.get('name')}")
    state = module.state_dict()
    odd = [k for k in record["extra"] if k not in state]
    if odd:
        raise BadInputError(f"{path}: {odd[0]!r} is not a tensor of {base.get('name')}")
    digest = base_digest(module)
    if digest != record.get("base_digest"):
        raise BadInputError(
            f"{run_dir}: the base {base.get('name')} loaded here differs from the one the adapters were trained on "
            f"(weights digest {digest[:12]}… ≠ {str(record.get('base_digest'))[:12]}…); restore the original base "
            f"weights, or fine-tune again"
        )
    adapters = attach_adapters(
        module, blocks, record["adapter_spec"], record["blocks"], targets=record["targets"],
        feedforward=record["feedforward"],
    )  # fmt: skip
    tensors = load_tensors(run_dir / ADAPTER_WEIGHTS, "copy the run directory again, or rerun tlkit finetune")
    expected = set(adapters.state_keys)
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise BadInputError(
            f"{run_dir / ADAPTER_WEIGHTS}: its tensors do not match {ADAPTER_CONFIG} (e.g. {odd[0]!r}); the run "
            f"directory is damaged"
        )
    try:
        module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise BadInputError(
            f"{run_dir / ADAPTER_WEIGHTS}: tensors do not fit ({str(exc).splitlines()[0]}); the run is damaged"
        ) from exc
    adapters.base = {**recorded, **dict(base)}
    return adapters


def run_state(adapters: Adapters, backbone: nn.Module, head: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a run with adapters saves and restores: ``backbone.<adapter and BatchNorm tensors>`` and
    ``head.*`` (the frozen base is rebuilt, and checked, instead)."""
    state = backbone.state_dict()
    out = {f"backbone.{k}": state[k] for k in adapters.state_keys}
    out.update({f"head.{k}": v for k, v in head.state_dict().items()})
    return out


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_ADAPTER_LR_RATIO",
    "METHODS",
    "AdapterSpec",
    "Adapters",
    "adapter_spec",
    "attach_adapters",
    "base_digest",
    "load_adapters",
    "parse_adapter",
    "peft_config",
    "read_adapter_config",
    "run_state",
    "save_adapter_files",
    "select_feedforward",
    "select_targets",
]
