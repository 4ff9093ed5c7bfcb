"""The surface for plugin authors: everything a tlkit plugin imports from tlkit, in one module.

A plugin (the built-in timm, torchvision and transformers plugins included) imports only this module and
:mod:`tlkit.testing`; the modules behind these names are internal and may move. Importing it does not import torch.

- **the backbone contract**: :class:`Backbone` (subclass it; implement :meth:`Backbone.build_module` and friends;
  check options in :meth:`Backbone.validate`, the validation point the host calls before any data is read),
  :class:`ImageBackbone` (an image backbone with one transform per mode), :class:`BackboneSpec`, :class:`Block` and
  the helpers that build blocks, shapes-only models and content hashes;
- **weights**: :func:`load_state_dict_file`, the one safe loader for local weight files;
- **augmentation**: the image augmentation vocabulary (:func:`parse_augment`, :data:`AUGMENT_PRESETS`);
- **hooks**: the :data:`hookimpl` marker, the typed ``register`` callbacks the registration hooks receive
  (:class:`RegisterBackbone`, :class:`RegisterHead`, :class:`RegisterReader`), :class:`BackboneEntry` (what
  ``tlkit_resolve_backbone`` and ``tlkit_list_backbones`` return) and :class:`BackboneFamily` (both hooks for a zoo
  of models under one name prefix);
- **names without imports**: :func:`library_index`, data a plugin derives from its model library (the model names)
  built once per installed version and kept on disk, so listing and checking names imports no model library;
- **downloads**: :func:`offline_reason` (why a URL cannot be reached now, asked once per host) and
  :func:`use_hub_cache_only`, so that a plugin fails in one line without a network instead of retrying;
- **readers and decoding**: the reader base classes (the core :class:`TextReader` reads CSV, TSV and JSONL),
  :class:`Record`, :class:`Skipped` (an entry a scan leaves out, with its reason), :class:`BadItemError` (raise it
  from ``Reader.load`` for an item that cannot be decoded), image decoding (:func:`decode_image`,
  :func:`as_rgb_image`) and audio helpers (:func:`decode_audio`, :func:`resample`, :func:`to_mono`);
- **errors**: raise these, and the CLI shows them as one-line messages.
"""

from __future__ import annotations

from tlkit.contract.augment import AUGMENT_KEYS, AUGMENT_NONE, AUGMENT_PRESETS, AUTO_AUGMENT_POLICIES, parse_augment
from tlkit.contract.backbone import (
    MODALITY_PREPROCESS_KEYS,
    REQUIRED_PREPROCESS_KEYS,
    WEIGHTS_NONE,
    WEIGHTS_PRETRAINED,
    Backbone,
    BackboneSpec,
    Batch,
    Block,
    blocks_from_children,
    blocks_from_prefixes,
    build_shapes_only,
    hash_path,
)
from tlkit.contract.image import ImageBackbone
from tlkit.contract.weights import WEIGHT_SUFFIXES, load_state_dict_file
from tlkit.data.audio import AUDIO_EXTENSIONS, AudioClip, AudioReader, decode_audio, resample, to_mono
from tlkit.data.base import UNLABELLED, Dataset, Reader, Record, Skipped
from tlkit.data.image import IMAGE_EXTENSIONS, ImageReader, as_rgb_image, decode_image
from tlkit.data.text import TextReader
from tlkit.errors import (
    BadInputError,
    BadItemError,
    ConfigError,
    NotInstalled,
    PluginError,
    TlkitError,
    UnknownNameError,
)
from tlkit.host.families import BackboneFamily
from tlkit.host.hookspecs import RegisterBackbone, RegisterHead, RegisterReader, hookimpl
from tlkit.host.memo import library_index
from tlkit.host.network import offline_reason, use_hub_cache_only
from tlkit.host.registry import MODALITIES, BackboneEntry

__all__ = [
    # the backbone contract
    "Backbone",
    "BackboneSpec",
    "Batch",
    "Block",
    "ImageBackbone",
    "MODALITIES",
    "MODALITY_PREPROCESS_KEYS",
    "REQUIRED_PREPROCESS_KEYS",
    "WEIGHTS_NONE",
    "WEIGHTS_PRETRAINED",
    "blocks_from_children",
    "blocks_from_prefixes",
    "build_shapes_only",
    "hash_path",
    # weights
    "WEIGHT_SUFFIXES",
    "load_state_dict_file",
    # augmentation
    "AUGMENT_KEYS",
    "AUGMENT_NONE",
    "AUGMENT_PRESETS",
    "AUTO_AUGMENT_POLICIES",
    "parse_augment",
    # hooks and registration
    "BackboneEntry",
    "BackboneFamily",
    "RegisterBackbone",
    "RegisterHead",
    "RegisterReader",
    "hookimpl",
    # what a plugin learns from its library once (names), without importing it again
    "library_index",
    # downloads: fail at once without a network
    "offline_reason",
    "use_hub_cache_only",
    # readers and decoding
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "AudioClip",
    "AudioReader",
    "Dataset",
    "ImageReader",
    "Reader",
    "Record",
    "Skipped",
    "TextReader",
    "as_rgb_image",
    "decode_audio",
    "decode_image",
    "resample",
    "to_mono",
    # errors
    "BadInputError",
    "BadItemError",
    "ConfigError",
    "NotInstalled",
    "PluginError",
    "TlkitError",
    "UnknownNameError",
]
