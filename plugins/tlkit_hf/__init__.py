"""tlkit built-in plugin: Hugging Face transformers text and audio encoders.

Names are ``hf/<hub id>`` (``hf/bert-base-uncased``, ``hf/openai/whisper-base``) or ``hf/<local directory>`` (a
model saved with ``save_pretrained``, or a sentence-transformers model). The modality comes from the config's
``model_type``: it picks the backbone class (text or audio), whose ``modality`` the entry reports. Importing this
module is cheap: torch and transformers load only when a backbone is built.
"""

from __future__ import annotations

import fnmatch

from tlkit.plugin import BackboneEntry, BadInputError, hookimpl
from tlkit_hf.naming import CURATED, PREFIX, modality_of, model_type_of, split_name

PLUGIN = "hf"


def entry_for(name: str, modality: str, summary: str = "") -> BackboneEntry:
    """The entry for ``name``: the text or the audio backbone class."""
    from tlkit_hf.audio import HFAudioBackbone
    from tlkit_hf.text import HFTextBackbone

    factory = HFTextBackbone if modality == "text" else HFAudioBackbone
    return BackboneEntry(name=name, factory=factory, summary=summary, plugin=PLUGIN)


@hookimpl
def tlkit_resolve_backbone(name: str) -> BackboneEntry | None:
    """Any ``hf/<id or dir>`` of a supported model type; ``None`` for other names."""
    ref = split_name(name)
    if ref is None:
        return None
    if not ref:
        raise BadInputError("hf/: give a hub id or a local directory after hf/, e.g. hf/bert-base-uncased")
    model_type = model_type_of(ref, name)
    return entry_for(name, modality_of(model_type, name), f"transformers {model_type}")


@hookimpl
def tlkit_list_backbones(pattern: str | None) -> list[BackboneEntry]:
    """The curated hub ids (no network), filtered by ``pattern``."""
    out = []
    for ref, (model_type, summary) in CURATED.items():
        name = PREFIX + ref
        if pattern is None or fnmatch.fnmatch(name, pattern):
            out.append(entry_for(name, modality_of(model_type, name), summary))
    return out
