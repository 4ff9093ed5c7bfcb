"""tlkit built-in plugin: Hugging Face transformers text and audio encoders.

Names are ``hf/<hub id>`` (``hf/bert-base-uncased``, ``hf/openai/whisper-base``) or ``hf/<local directory>`` (a
model saved with ``save_pretrained``, or a sentence-transformers model). The modality comes from the config's
``model_type``. Importing this module is cheap: torch and transformers load only when a backbone is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tlkit.host.hookspecs import hookimpl

if TYPE_CHECKING:
    from tlkit.host.registry import BackboneEntry


@hookimpl
def tlkit_resolve_backbone(name: str) -> BackboneEntry | None:
    from tlkit_hf.naming import resolve

    return resolve(name)


@hookimpl
def tlkit_list_backbones(pattern: str | None) -> Iterable[BackboneEntry] | None:
    from tlkit_hf.naming import curated_entries

    return curated_entries(pattern)
