"""Text encoders from transformers (BERT, DistilBERT, RoBERTa, MiniLM, DeBERTa, XLM-R, ...) and
sentence-transformers models.

Preprocessing is the model's own tokenizer with ``max_length`` truncation (sentence-transformers' ``max_seq_length``
when the model has one). Items are tokenized one at a time without padding; :meth:`collate` pads a batch. Pooling
is attention-masked, so an item embeds the same alone and in a batch with longer items.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from tlkit.plugin import BackboneSpec, ConfigError
from tlkit_hf.base import HFBackbone
from tlkit_hf.blocks import BlockLayout, find_layer_list, has_child
from tlkit_hf.pooling import SEQUENCE_POOLING, l2_normalize, pool
from tlkit_hf.sources import TOKENIZER_FILES, ModelFiles
from tlkit_hf.st_dirs import SentenceTransformerInfo, read_sentence_transformer

if TYPE_CHECKING:
    import torch

TEXT_POOLING = ("mean", "cls", "pooler", "max", "mean_sqrt_len", "weightedmean", "lasttoken")
#: Models whose position ids start after the padding index, so ``max_position_embeddings`` includes an offset.
PADDING_OFFSET_TYPES = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "roberta-prelayernorm",
    "data2vec-text",
    "mpnet",
)
_NO_LIMIT = 1_000_000  # tokenizers without a real limit report ~1e30


class HFTextBackbone(HFBackbone):
    """``hf/<id or dir>`` for a text encoder. Options: ``pooling`` (mean, cls, pooler, max, ...; default mean, or
    the sentence-transformers Pooling mode), ``normalize`` (L2; default on for sentence-transformers models with a
    Normalize module), ``preprocess={"max_length": N, "tokenizer": id_or_dir}``."""

    modality = "text"
    extra_options = ("normalize",)
    preprocessing_files = TOKENIZER_FILES

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        if self.pooling is not None and self.pooling not in TEXT_POOLING:
            raise ConfigError(f"{name}: unknown pooling {self.pooling!r}; choose one of {', '.join(TEXT_POOLING)}")

    # -- files --------------------------------------------------------------------------------------------------
    @cached_property
    def st_info(self) -> SentenceTransformerInfo | None:
        """The sentence-transformers pipeline, when the model is one."""
        return read_sentence_transformer(super()._locate_files(), self.name)

    def _locate_files(self) -> ModelFiles:
        files = super()._locate_files()
        st = read_sentence_transformer(files, self.name) if not files.local else None
        if st is not None and st.transformer_path and not files.subfolder:
            files = replace(files, subfolder=st.transformer_path)  # a hub repo keeps the model in a module folder
        return files

    def _default_tokenizer(self) -> str:
        return str(self.files.model_dir) if self.files.local else self.files.ref

    def _position_limit(self) -> int | None:
        cfg = self.hf_config
        limit = getattr(cfg, "max_position_embeddings", None)
        if not limit:
            return None
        if cfg.model_type in PADDING_OFFSET_TYPES:
            limit -= int(getattr(cfg, "pad_token_id", 1) or 1) + 1
        return int(limit)

    def _default_max_length(self) -> int:
        limit = self._position_limit()
        st = self.st_info
        if st is not None and st.max_seq_length:
            value = st.max_seq_length
        else:
            tok_cfg = self.files.read_json("tokenizer_config.json", model_file=True) or {}
            mml = tok_cfg.get("model_max_length")
            value = int(mml) if isinstance(mml, int | float) and 0 < mml < _NO_LIMIT else (limit or 512)
        return min(value, limit) if limit else value

    # -- spec ---------------------------------------------------------------------------------------------------
    @cached_property
    def _spec(self) -> BackboneSpec:
        self.model_type  # noqa: B018 - a clear error when the weights hold an audio model
        st = self.st_info
        preprocess = {
            "tokenizer": self._default_tokenizer(),
            "max_length": self._default_max_length(),
            **self.preprocess_overrides,
        }
        if st is not None and st.do_lower_case:
            preprocess.setdefault("lowercase", True)
        normalize = self.options.get("normalize")
        cfg = self.hf_config
        return BackboneSpec(
            name=self.name,
            modality=self.modality,
            embed_dim=int(cfg.hidden_size),
            preprocess=preprocess,
            pooling=self.pooling or (st.pooling if st else "mean"),
            weights=self.weights,
            source=self._source(),
            license=self.files.license(),
            extra={
                "model_type": cfg.model_type,
                "normalize": bool(normalize if normalize is not None else (st.normalize if st else False)),
                "sentence_transformers": st is not None,
                "num_layers": int(getattr(cfg, "num_hidden_layers", 0) or 0),
            },
        )

    @property
    def spec(self) -> BackboneSpec:
        return self._spec

    def preprocessing_identity(self) -> str:
        tok = str(self.spec.preprocess["tokenizer"])
        if tok == self._default_tokenizer():
            return self.files.identity(TOKENIZER_FILES, commit=self.hub_commit())
        return ModelFiles.at(tok, find_config=False).identity(TOKENIZER_FILES)

    # -- preprocessing ------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> Any:
        """The model's own tokenizer (or the one ``preprocess["tokenizer"]`` names)."""
        from transformers import AutoTokenizer

        tok = str(self.spec.preprocess["tokenizer"])
        if tok == self._default_tokenizer():
            ref, kwargs = self.files.pretrained_args()
        else:
            ref, kwargs = ModelFiles.at(tok, find_config=False).pretrained_args()
        trust = bool(self.options.get("trust_remote_code"))
        with self.loading("tokenizer"):
            return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust, **kwargs)

    def validate(self) -> None:
        """An overridden ``max_length`` is checked against the model's position limit here, not per item."""
        super().validate()
        if "max_length" in self.preprocess_overrides:
            self.max_length  # noqa: B018 - the property checks the value

    @property
    def max_length(self) -> int:
        value = int(self.spec.preprocess["max_length"])
        limit = self._position_limit()
        if value < 2 or (limit and value > limit):
            raise ConfigError(
                f"{self.name}: max_length {value} is outside 2..{limit or 'inf'} (the model's position limit)"
            )
        return value

    def preprocess_item(self, item: Any, *, train: bool = False) -> dict[str, Any]:
        """Token ids for one text, truncated at ``max_length``; ``truncated`` says whether it was cut."""
        text = str(item).strip()  # as sentence-transformers does; trailing newlines of .txt files go too
        if self.spec.preprocess.get("lowercase"):
            text = text.lower()
        tok, limit = self.tokenizer, self.max_length
        enc = tok(text, truncation=False, verbose=False)
        truncated = len(enc["input_ids"]) > limit
        if truncated:
            enc = tok(text, truncation=True, max_length=limit)
        out: dict[str, Any] = {k: list(v) for k, v in enc.items() if k in tok.model_input_names}
        out["truncated"] = truncated
        return out

    def item_flags(self, processed: Any) -> tuple[str, ...]:
        return ("truncated",) if isinstance(processed, dict) and processed.get("truncated") else ()

    def sort_key(self, item: Any) -> int:
        return len(str(item))

    def collate(self, processed: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{k: v for k, v in p.items() if k != "truncated"} for p in processed]
        return dict(self.tokenizer.pad(rows, padding=True, return_tensors="pt"))

    # -- forward ------------------------------------------------------------------------------------------------
    @cached_property
    def _accepted_inputs(self) -> frozenset[str]:
        params = inspect.signature(self.module.forward).parameters
        return frozenset(n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))

    def _forward_pool(
        self, batch: dict[str, torch.Tensor], captured: dict[str, torch.Tensor], layers: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {k: v for k, v in batch.items() if k in self._accepted_inputs}
        out = self.module(**inputs)
        mask = batch["attention_mask"]
        mode = self.spec.pooling
        if mode == "pooler":
            final = getattr(out, "pooler_output", None)
            if final is None:
                raise ConfigError(f"{self.name}: the model has no pooler layer; use pooling mean or cls")
        else:
            final = pool(out.last_hidden_state, mask, mode)
        layer_mode = mode if mode in SEQUENCE_POOLING else "cls"
        pooled = {n: self._finish(pool(captured[n], mask, layer_mode)) for n in layers}
        return self._finish(final), pooled

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return l2_normalize(x) if self.spec.extra["normalize"] else x

    # -- structure ----------------------------------------------------------------------------------------------
    def layout(self) -> BlockLayout:
        module = self.module
        n_layers = int(getattr(self.hf_config, "num_hidden_layers", 0) or 0)
        before = [("embeddings", ["embeddings"] if has_child(module, "embeddings") else [])]
        after = [("pooler", ["pooler"])] if has_child(module, "pooler") else []
        unused = () if self.spec.pooling == "pooler" else ("pooler",)  # other poolings never read the pooler
        return BlockLayout(find_layer_list(module, n_layers), "layer", n_layers, before, after, unused=unused)

    def layer_paths(self) -> dict[str, str]:
        module = self.module
        head = {"embeddings": "embeddings"} if has_child(module, "embeddings") else {}
        return {**head, **self.layout().layer_paths()}
