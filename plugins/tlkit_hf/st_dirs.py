"""Recognising sentence-transformers models (``modules.json``), so they give exactly their own embedding.

A sentence-transformers model is a pipeline of modules: ``Transformer`` (a transformers model and tokenizer, with
``max_seq_length`` and ``do_lower_case`` in ``sentence_bert_config.json``), ``Pooling`` (``1_Pooling/config.json``)
and optionally ``Normalize``. Any other module (``Dense``, ``LayerNorm``, ...) would change the output in a way
this plugin does not reproduce, so it is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlkit.plugin import BadInputError

if TYPE_CHECKING:
    from tlkit_hf.sources import ModelFiles

#: sentence-transformers pooling flags -> tlkit pooling names.
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class SentenceTransformerInfo:
    transformer_path: str
    pooling: str
    normalize: bool
    max_seq_length: int | None
    do_lower_case: bool


def read_sentence_transformer(files: ModelFiles, name: str) -> SentenceTransformerInfo | None:
    """The pipeline described by ``modules.json``, or ``None`` when the model is a plain transformers model."""
    modules = files.read_json("modules.json")
    if not modules:
        return None
    transformer_path: str | None = None
    pooling = "mean"
    normalize = False
    for m in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        path = str(m.get("path", "")).strip("/")
        if kind == "Transformer":
            transformer_path = path
        elif kind == "Pooling":
            pooling = _pooling_mode(files.read_json(f"{path}/config.json") if path else None, name)
        elif kind == "Normalize":
            normalize = True
        else:
            raise BadInputError(
                f"{name}: sentence-transformers module {kind!r} is not supported (only Transformer, Pooling and "
                f"Normalize); embed it with sentence-transformers itself, or remove the module from modules.json"
            )
    if transformer_path is None:
        raise BadInputError(f"{name}: modules.json has no Transformer module; this is not a text encoder tlkit reads")
    st_file = f"{transformer_path}/sentence_bert_config.json" if transformer_path else "sentence_bert_config.json"
    st_cfg = files.read_json(st_file) or {}
    max_len = st_cfg.get("max_seq_length")
    return SentenceTransformerInfo(
        transformer_path=transformer_path,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=int(max_len) if max_len else None,
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
    )


def _pooling_mode(cfg: dict | None, name: str) -> str:
    if not cfg:
        return "mean"  # sentence-transformers' own default
    if isinstance(cfg.get("pooling_mode"), str):
        mode = cfg["pooling_mode"].replace("_tokens", "").replace("_token", "")
        return {"mean_sqrt_len": "mean_sqrt_len", "weightedmean": "weightedmean"}.get(mode, mode)
    modes = [tl for flag, tl in POOLING_FLAGS.items() if cfg.get(flag)]
    if len(modes) != 1:
        raise BadInputError(
            f"{name}: the sentence-transformers Pooling module combines {modes or 'no'} pooling modes; "
            f"tlkit supports exactly one of {', '.join(POOLING_FLAGS.values())}"
        )
    if cfg.get("include_prompt") is False:
        raise BadInputError(f"{name}: Pooling with include_prompt=false is not supported")
    return modes[0]
