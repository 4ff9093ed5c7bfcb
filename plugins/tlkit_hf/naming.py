"""Names: ``hf/<hub id>`` or ``hf/<local directory>``, and which modality a name has.

The modality comes from the model's own config (``model_type``): ``config.json`` is read directly for a local
directory (no transformers import), the curated table answers for well-known hub ids without a network call, and
any other hub id asks ``AutoConfig`` (one small download, cached by huggingface_hub).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlkit.plugin import BadInputError, offline_reason, use_hub_cache_only

PREFIX = "hf/"

#: The local alternatives an offline error names (``{param}`` is the weights flag).
LOCAL_FIX = (
    "use a local model directory as hf/<dir> (a folder saved with save_pretrained, or a sentence-transformers "
    "model), or pass {param} none for random init (it needs the model's config.json in the local cache)"
)


def hub_offline() -> str | None:
    """Why the Hugging Face hub cannot be reached now (asked once per process), or ``None``. When it cannot, only
    the local cache is read from here on, so that a miss fails at once instead of retrying for a minute."""
    reason = offline_reason()
    if reason is not None:
        use_hub_cache_only(reason)
    return reason


#: Encoder-only text models that ``AutoModel`` + ``AutoTokenizer`` load and that pool like BERT.
TEXT_MODEL_TYPES = (
    "albert",
    "bert",
    "camembert",
    "convbert",
    "data2vec-text",
    "deberta",
    "deberta-v2",
    "distilbert",
    "electra",
    "ernie",
    "mobilebert",
    "modernbert",
    "mpnet",
    "roberta",
    "roberta-prelayernorm",
    "squeezebert",
    "xlm-roberta",
    "xlm-roberta-xl",
)

#: Audio model types and the input family each belongs to (raw waveform, log-mel, or filter-bank patches).
AUDIO_MODEL_TYPES = {
    "wav2vec2": "wav2vec2",
    "hubert": "wav2vec2",
    "wavlm": "wav2vec2",
    "data2vec-audio": "wav2vec2",
    "whisper": "whisper",
    "audio-spectrogram-transformer": "ast",
}

#: Well-known hub ids: listed by ``tlkit backbones`` and resolved without a network call.
CURATED: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("bert", "MiniLM-L6 sentence embeddings, 384-d, mean + L2 (22.7M)"),
    "sentence-transformers/all-mpnet-base-v2": ("mpnet", "MPNet sentence embeddings, 768-d, mean + L2 (109M)"),
    "BAAI/bge-small-en-v1.5": ("bert", "BGE small English embeddings, 384-d, CLS + L2 (33M)"),
    "bert-base-uncased": ("bert", "BERT base, uncased English (110M)"),
    "bert-base-multilingual-cased": ("bert", "BERT base, 104 languages (178M)"),
    "distilbert-base-uncased": ("distilbert", "DistilBERT base, uncased English (66M)"),
    "roberta-base": ("roberta", "RoBERTa base, English (125M)"),
    "xlm-roberta-base": ("xlm-roberta", "XLM-RoBERTa base, 100 languages (278M)"),
    "microsoft/deberta-v3-base": ("deberta-v2", "DeBERTa-v3 base, English (184M)"),
    "facebook/wav2vec2-base": ("wav2vec2", "wav2vec 2.0 base, self-supervised on LibriSpeech (95M)"),
    "facebook/wav2vec2-base-960h": ("wav2vec2", "wav2vec 2.0 base fine-tuned for English ASR (95M)"),
    "facebook/hubert-base-ls960": ("hubert", "HuBERT base, LibriSpeech 960h (95M)"),
    "microsoft/wavlm-base-plus": ("wavlm", "WavLM base+, 94k hours of speech (95M)"),
    "facebook/data2vec-audio-base": ("data2vec-audio", "data2vec audio base, LibriSpeech (94M)"),
    "MIT/ast-finetuned-audioset-10-10-0.4593": (
        "audio-spectrogram-transformer",
        "Audio Spectrogram Transformer, AudioSet (87M)",
    ),
    "openai/whisper-tiny": ("whisper", "Whisper tiny encoder, multilingual speech (8M of 39M)"),
    "openai/whisper-base": ("whisper", "Whisper base encoder, multilingual speech (20M of 74M)"),
    "openai/whisper-small": ("whisper", "Whisper small encoder, multilingual speech (88M of 244M)"),
}


def split_name(name: str) -> str | None:
    """The part after ``hf/``, or ``None`` when the name is not this plugin's."""
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return None
    return name[len(PREFIX) :]


def local_dir(ref: str) -> Path | None:
    """``ref`` as an existing local directory (``~`` expanded, made absolute), or ``None`` for a hub id."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    return path.resolve() if path.is_dir() else None


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not a readable JSON file ({exc}); re-save it with save_pretrained") from exc


def config_dir(root: Path) -> Path:
    """Where ``config.json`` lives: the directory itself, or a sentence-transformers ``Transformer`` module folder."""
    if (root / "config.json").is_file():
        return root
    modules = root / "modules.json"
    if modules.is_file():
        for m in read_json_file(modules) or []:
            if str(m.get("type", "")).endswith("Transformer") and (root / m.get("path", "") / "config.json").is_file():
                return root / m.get("path", "")
    raise BadInputError(
        f"{root}: no config.json; an hf/ directory must hold a model saved with save_pretrained "
        f"(config.json plus weights) or a sentence-transformers model"
    )


def check_cached_when_offline(name: str, ref: str, revision: str | None = None) -> None:
    """Without a network, a hub model whose config is not in the local cache cannot be used at all (random init
    needs the config too): say so now, in one line, before anything heavy is imported."""
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        return  # not a hub id: model_type_of says so
    offline = hub_offline()
    if offline is None:
        return
    from huggingface_hub import try_to_load_from_cache

    if not any(
        isinstance(try_to_load_from_cache(ref, f, revision=revision), str) for f in ("config.json", "modules.json")
    ):
        raise BadInputError(
            f"{name}: {ref!r} is not in the local Hugging Face cache and cannot be downloaded: {offline}; " + LOCAL_FIX,
            param="weights",
        )


def supported_types_text() -> str:
    return f"text: {', '.join(TEXT_MODEL_TYPES)}; audio: {', '.join(AUDIO_MODEL_TYPES)}"


def modality_of(model_type: str, name: str) -> str:
    """``"text"`` or ``"audio"`` for a supported ``model_type``; a clear error naming the supported types."""
    if model_type in AUDIO_MODEL_TYPES:
        return "audio"
    if model_type in TEXT_MODEL_TYPES:
        return "text"
    raise BadInputError(
        f"{name}: model type {model_type!r} is not supported by the hf plugin; supported types are "
        f"{supported_types_text()}"
    )


def model_type_of(ref: str, name: str, revision: str | None = None) -> str:
    """The ``model_type`` of a local directory or hub id (see the module docstring for where it comes from)."""
    root = local_dir(ref)
    if root is not None:
        cfg = read_json_file(config_dir(root) / "config.json")
        model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
        if not model_type:
            raise BadInputError(f"{root}/config.json has no model_type; re-save the model with save_pretrained")
        return str(model_type)
    if ref in CURATED and revision is None:
        return CURATED[ref][0]
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise BadInputError(f"{name}: no such directory {ref!r}; pass an existing local directory or a hub id")
    offline = hub_offline()
    try:
        from transformers import AutoConfig

        return str(AutoConfig.from_pretrained(ref, revision=revision).model_type)
    except Exception as exc:
        if offline is not None:
            raise BadInputError(
                f"{name}: cannot read the config of {ref!r}: {offline}, and it is not in the local cache; " + LOCAL_FIX,
                param="weights",
            ) from exc
        raise BadInputError(
            f"{name}: cannot read the config of {ref!r} from the Hugging Face hub ({type(exc).__name__}); "
            f"check the id and your connection, or pass a local directory as hf/<dir>"
        ) from exc
