"""Shared test setup: no hub access (the network here reaches only package registries), fresh plugin state."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def fresh_plugins():
    """Rediscover plugins before and after the test (for tests that change TLKIT_PLUGINS or register plugins)."""
    from tlkit.host import manager as plugins

    plugins.reset()
    yield plugins
    plugins.reset()
