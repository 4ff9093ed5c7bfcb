"""What text and audio backbones from transformers share: where the files are, the config, loading the weights
(hub, random init or a local directory), the weights identity, blocks and per-layer outputs."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from tlkit.plugin import (
    WEIGHTS_NONE,
    Backbone,
    BadInputError,
    Block,
    ConfigError,
    TlkitError,
    UnknownNameError,
    load_state_dict_file,
)
from tlkit_hf.blocks import BlockLayout, capture_outputs
from tlkit_hf.naming import (
    LOCAL_FIX,
    PREFIX,
    check_cached_when_offline,
    hub_offline,
    local_dir,
    modality_of,
    model_type_of,
    split_name,
)
from tlkit_hf.sources import ModelFiles

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Options every hf backbone accepts besides the common ones (weights, preprocess, pooling, augment). ``local_dir``
#: is where a local model's files are (set when the name is a directory: ``hf/./models/mini`` is ``hf/mini`` with
#: ``local_dir`` the directory).
COMMON_OPTIONS = ("revision", "seed", "trust_remote_code", "local_dir")


class HFBackbone(Backbone):
    """Base class: subclasses add preprocessing, the forward pass and pooling for one modality."""

    extra_options: tuple[str, ...] = ()
    #: Files (in the model folder) that define the preprocessing; their hash goes into the fingerprint.
    preprocessing_files: tuple[str, ...] = ()

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        unknown = sorted(set(self.options) - set(COMMON_OPTIONS) - set(self.extra_options))
        if unknown:
            allowed = ", ".join((*COMMON_OPTIONS, *self.extra_options))
            raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}; hf backbones accept {allowed}")

    # -- files and config ---------------------------------------------------------------------------------------
    @property
    def ref(self) -> str:
        ref = split_name(self.name)
        return ref if ref is not None else self.name

    @cached_property
    def files(self) -> ModelFiles:
        """Where config, tokenizer or feature extractor and weights come from: a local weights directory when
        ``weights`` names one, else the name's own hub id or directory."""
        return self._locate_files()

    def _locate_files(self) -> ModelFiles:
        if self.weights_kind() == "local" and self.local_weights_path().is_dir():
            return ModelFiles.at(str(self.local_weights_path()))
        if self.options.get("local_dir"):
            return ModelFiles.at(str(self.options["local_dir"]))
        return ModelFiles.at(self.ref, self.options.get("revision"))

    @cached_property
    def hf_config(self) -> Any:
        """The transformers config (read from the directory, or from the hub's config.json; no weights)."""
        from transformers import AutoConfig

        ref, kwargs = self.files.pretrained_args()
        with self.loading("config"):
            return AutoConfig.from_pretrained(
                ref, trust_remote_code=bool(self.options.get("trust_remote_code")), **kwargs
            )

    @contextmanager
    def loading(self, what: str) -> Iterator[None]:
        """Turn a transformers or hub failure into one clear line naming the model and the fix. Without a network
        only the hub's local cache is read (:func:`tlkit_hf.naming.hub_offline`)."""
        offline = None if self.files.local else hub_offline()
        try:
            yield
        except TlkitError:
            raise
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            if offline is not None:
                raise BadInputError(
                    f"{self.name}: cannot load the {what} from the Hugging Face hub ({self.files.ref}): {offline}, "
                    f"and it is not in the local cache; " + LOCAL_FIX,
                    param="weights",
                ) from exc
            if self.files.local:
                where, fix = self.files.ref, "check the directory, or re-save the model with save_pretrained"
            else:
                where = f"the Hugging Face hub ({self.files.ref})"
                fix = "check the id and your connection, or use a local directory as hf/<dir> or {param} <dir>"
            raise BadInputError(
                f"{self.name}: cannot load the {what} from {where}: {detail}; {fix}", param="weights"
            ) from exc

    @cached_property
    def model_type(self) -> str:
        """The config's ``model_type``, checked against this backbone's modality (``weights`` may name a directory
        holding another kind of model)."""
        if self.files.local:
            model_type = model_type_of(str(self.files.model_dir), self.name)
        else:
            model_type = str(self.hf_config.model_type)
        found = modality_of(model_type, self.name)
        if found != self.modality:
            raise BadInputError(
                f"{self.name}: {self.files.ref} holds a {model_type} model ({found}), but this backbone is "
                f"{self.modality}; pass weights of the same kind"
            )
        return model_type

    def _source(self) -> str:
        return self.files.ref + (f"@{self.files.revision}" if self.files.revision else "")

    # -- loading ------------------------------------------------------------------------------------------------
    def check_weights_available(self) -> None:
        """A hub model needs its files in the local Hugging Face cache when the hub cannot be reached (random init
        needs the config too); decided without importing transformers."""
        super().check_weights_available()
        if self.weights_kind() != "local" and not self.options.get("local_dir") and local_dir(self.ref) is None:
            check_cached_when_offline(self.name, self.ref, self.options.get("revision"))

    def build_module(self) -> nn.Module:
        import torch
        from transformers import AutoModel

        trust = bool(self.options.get("trust_remote_code"))
        # Seeded so that random init ("none") and any weights a checkpoint lacks are the same in every process.
        with torch.random.fork_rng(devices=[]), _quiet_progress(), self.loading("weights"):
            torch.manual_seed(int(self.options.get("seed", 0)))
            if self.weights == WEIGHTS_NONE or (self.weights_kind() == "local" and self.local_weights_path().is_file()):
                model = AutoModel.from_config(self.hf_config, trust_remote_code=trust)
            else:
                ref, kwargs = self.files.pretrained_args()
                model = AutoModel.from_pretrained(ref, dtype=torch.float32, trust_remote_code=trust, **kwargs)
        module = self._select_module(model).float()
        if self.weights_kind() == "local" and self.local_weights_path().is_file():
            self._load_state_file(module)
        return module

    def _select_module(self, model: nn.Module) -> nn.Module:
        """The part of the transformers model that is the backbone (the encoder of an encoder-decoder)."""
        return model

    def _load_state_file(self, module: nn.Module) -> None:
        path = self.local_weights_path()
        state = load_state_dict_file(path)
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"{path}: weights do not fit {self.name} ({len(missing)} missing, e.g. {missing[:1]}; "
                f"{len(unexpected)} unexpected, e.g. {unexpected[:1]}); use the file saved from this backbone"
            )

    # -- identity -----------------------------------------------------------------------------------------------
    def weights_identity(self) -> str:
        kind = self.weights_kind()
        if kind == "none":
            return f"none:{self._source()}:seed{int(self.options.get('seed', 0))}"
        if kind == "local" and self.local_weights_path().is_file():
            return super().weights_identity()
        # A local directory (named, or given as weights) is identified by its content, a hub id by its commit.
        return self.files.identity(commit=self.hub_commit())

    def hub_commit(self) -> str | None:
        """The hub commit the config was read at (so ``main`` moving on changes the fingerprint); ``None`` locally."""
        return self.files.commit()

    def preprocessing_identity(self) -> str:
        return self.files.identity(self.preprocessing_files, commit=self.hub_commit())

    def fingerprint_data(self) -> dict[str, Any]:
        data = super().fingerprint_data()
        data["preprocessing_files"] = self.preprocessing_identity()
        if self.files.local:
            # Where the files are is not what they are (their content hashes say that): a copy of the directory
            # elsewhere, or on another machine, has the same fingerprint.
            places = {str(self.files.root), str(self.files.model_dir)}
            spec = data["spec"]
            spec["source"] = "local directory"
            spec["preprocess"] = {
                k: "(model directory)" if isinstance(v, str) and v in places else v
                for k, v in spec["preprocess"].items()
            }
        return data

    def memo_inputs(self) -> dict[str, list[str]] | None:
        """A local model is described by its files (keyed by the installed transformers, tokenizers and torch); a
        hub model's fingerprint holds the hub's current commit, so it is never memoised."""
        if not self.files.local:
            return None
        paths = [str(self.files.root)]
        if self.weights_kind() == "local" and self.local_weights_path().is_file():
            paths.append(str(self.local_weights_path()))
        return {"libraries": ["transformers", "tokenizers", "torch"], "paths": paths}

    # -- structure ----------------------------------------------------------------------------------------------
    def layout(self) -> BlockLayout:
        raise NotImplementedError

    def blocks(self) -> list[Block]:
        return self.layout().blocks(self.module)

    def layer_paths(self) -> dict[str, str]:
        """Block name -> module whose output is that block's output (for :meth:`embed_layers`)."""
        return self.layout().layer_paths()

    def layer_names(self) -> list[str]:
        return list(self.layer_paths())

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        module = self.module
        if not getattr(module, "supports_gradient_checkpointing", False):
            return False
        kwargs = {"use_reentrant": False}
        if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            if enable:
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                module.activation_checkpointing_disable()
        elif enable:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            module.gradient_checkpointing_disable()
        return True

    # -- forward ------------------------------------------------------------------------------------------------
    def embed(self, batch: Any) -> torch.Tensor:
        return self.embed_layers(batch, ())[0]

    def embed_layers(self, batch: Any, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        paths = self.layer_paths()
        unknown = [n for n in layers if n not in paths]
        if unknown:
            raise UnknownNameError("layer", unknown[0], paths, hint=f"layers of {self.name}")
        with capture_outputs(self.module, {n: paths[n] for n in layers}) as captured:
            final = self._forward_pool(batch, captured, list(layers))
        return final

    def _forward_pool(
        self, batch: Any, captured: dict[str, torch.Tensor], layers: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model once; pool the final output and each captured layer output."""
        raise NotImplementedError

    # -- copies -------------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Pickling (DataLoader workers started with spawn) carries the options and the preprocessing (tokenizer,
        feature extractor), not the network: workers only preprocess, and weight-normed convolutions (wav2vec2's
        positional embedding) cannot be pickled. An unpickled copy loads its weights again if ``module`` is used."""
        state = self.__dict__.copy()
        state["_module"] = None
        state.pop("_accepted_inputs", None)
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> HFBackbone:
        # A deep copy keeps the (possibly fine-tuned) network, unlike pickling.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}({PREFIX + self.ref!r}, weights={self.weights!r})"


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Loading weights" bar from transformers: the CLI draws its own progress."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()
