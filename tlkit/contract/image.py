"""A base for image backbones whose preprocessing is one transform (a torchvision or timm pipeline) per mode."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from tlkit.contract.backbone import Backbone
from tlkit.data.image import as_rgb_image


class ImageBackbone(Backbone):
    """An image :class:`~tlkit.contract.backbone.Backbone` that preprocesses with one transform per mode.

    Subclasses implement :meth:`make_transform`; :meth:`preprocess_item` decodes whatever the user passed (a PIL
    image, a path, an array) to RGB and applies the transform, built once per mode. For local weights the spec's
    ``source`` is the file's path, which differs between machines, so it stays out of the fingerprint: the file's
    content hash identifies the weights.
    """

    modality: ClassVar[str] = "image"

    @abstractmethod
    def make_transform(self, train: bool) -> Callable[[Any], Any]:
        """The transform from an RGB PIL image to model input: training augmentation (``self.augment``) when
        ``train``, else the evaluation preprocessing, both from ``self.spec.preprocess``."""

    def validate(self) -> None:
        """The base checks, then the training transform is built once (and dropped) when ``augment`` is set, so an
        augmentation the plugin refuses is a one-line error before any data is read, not a skip of every item."""
        super().validate()
        if self.augment not in (None, "none", "default"):
            self.make_transform(True)

    def preprocess_item(self, item: Any, *, train: bool = False) -> Any:
        transforms: dict[bool, Callable[[Any], Any]] = self.__dict__.setdefault("_transforms", {})
        if train not in transforms:
            transforms[train] = self.make_transform(train)
        return transforms[train](as_rgb_image(item))

    def fingerprint_data(self) -> dict[str, Any]:
        data = super().fingerprint_data()
        if self.weights_kind() == "local":
            data["spec"].pop("source", None)
        return data
