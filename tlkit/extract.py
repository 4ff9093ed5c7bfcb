"""``tlkit.extract``: the public entry point of the extraction engine (which lives in :mod:`tlkit.extraction`).

Importing a submodule binds it as an attribute of its package, so once anything imports ``tlkit.extract`` the name
``tlkit.extract`` is this module rather than the function. The module is therefore made callable: ``tlkit.extract(...)``
calls :func:`tlkit.extraction.extract` either way. New code should import from :mod:`tlkit.extraction`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from tlkit.extraction import ExtractResult, embed_records, extract

__all__ = ["ExtractResult", "embed_records", "extract"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> ExtractResult:
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
