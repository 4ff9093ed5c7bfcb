"""tlkit built-in plugin: Hugging Face transformers text and audio encoders.

Names are ``hf/<hub id>`` (``hf/bert-base-uncased``, ``hf/openai/whisper-base``) or ``hf/<local directory>`` (a
model saved with ``save_pretrained``, or a sentence-transformers model). A local directory's backbone is named
``hf/<directory name>`` (``hf/./models/mini`` and ``hf//abs/models/mini`` are both ``hf/mini``), and where its files
are is the option ``local_dir``, recorded beside the name: names, caches and fingerprints stay free of machine
paths. The modality comes from the config's ``model_type``: it picks the backbone class (text or audio), whose
``modality`` the entry reports. Importing this module is cheap: torch and transformers load only when a backbone is
built.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tlkit.plugin import BackboneEntry, BadInputError, hookimpl
from tlkit_hf.naming import CURATED, PREFIX, local_dir, modality_of, model_type_of, split_name

PLUGIN = "hf"


def entry_for(name: str, modality: str, summary: str = "", options: Mapping[str, Any] | None = None) -> BackboneEntry:
    """The entry for ``name``: the text or the audio backbone class."""
    from tlkit_hf.audio import HFAudioBackbone
    from tlkit_hf.text import HFTextBackbone

    factory = HFTextBackbone if modality == "text" else HFAudioBackbone
    return BackboneEntry(name=name, factory=factory, summary=summary, plugin=PLUGIN, options=dict(options or {}))


def _recorded_dir(name: str, options: Mapping[str, Any]) -> Path | None:
    """The ``local_dir`` option (a rebuilt backbone's recorded location), checked; ``None`` when not given."""
    given = options.get("local_dir")
    if not given:
        return None
    path = Path(str(given)).expanduser()
    if path.is_dir():
        return path.resolve()
    weights = Path(str(options.get("weights", ""))).expanduser()
    if str(options.get("weights", "")) not in ("", "pretrained", "none") and weights.is_dir():
        return weights.resolve()  # the same model, found elsewhere and passed as the weights
    raise BadInputError(
        f"{name}: its model directory {given} does not exist here (moved, or recorded on another machine); "
        f"pass the directory as {{param}} DIR",
        param="weights",
    )


@hookimpl
def tlkit_resolve_backbone(name: str, options: Mapping[str, Any]) -> BackboneEntry | None:
    """Any ``hf/<id or dir>`` of a supported model type; ``None`` for other names."""
    ref = split_name(name)
    if ref is None:
        return None
    if not ref:
        raise BadInputError("hf/: give a hub id or a local directory after hf/, e.g. hf/bert-base-uncased")
    root = local_dir(ref)
    if root is not None:  # hf/<path>: named after the directory, found through local_dir
        model_type = model_type_of(str(root), name)
        summary = f"transformers {model_type}, local directory {root}"
        return entry_for(PREFIX + root.name, modality_of(model_type, name), summary, {"local_dir": str(root)})
    recorded = _recorded_dir(name, options)
    if recorded is not None:
        model_type = model_type_of(str(recorded), name)
        summary = f"transformers {model_type}, local directory {recorded}"
        return entry_for(name, modality_of(model_type, name), summary, {"local_dir": str(recorded)})
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
