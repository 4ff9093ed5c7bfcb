"""The plugin host: hookspecs, the pluggy plugin manager, the registry of what plugins offer, and the built-ins.

``import tlkit`` imports only :mod:`tlkit.host.hookspecs` (for ``tlkit.hookimpl``); the manager and the registry load
plugins on first use.
"""

from tlkit.host.hookspecs import RegisterBackbone, RegisterHead, RegisterReader, hookimpl, hookspec

__all__ = ["RegisterBackbone", "RegisterHead", "RegisterReader", "hookimpl", "hookspec"]
