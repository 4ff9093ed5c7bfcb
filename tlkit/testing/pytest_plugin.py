"""pytest plugin (entry point ``pytest11``): the ``tlkit_conformance`` fixture for plugin authors.

    def test_my_backbone(tlkit_conformance):
        tlkit_conformance(get_backbone("mine/model", weights="none"), items)

It imports nothing heavy at load time, so it costs nothing in test sessions that do not use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def tlkit_conformance() -> Callable[..., Any]:
    """A callable ``(backbone, items, **kwargs) -> ConformanceReport`` that fails the test on any broken check."""
    from tlkit.testing.conformance import assert_conformant

    return assert_conformant
