"""A backbone's description (spec, fingerprint, blocks) without building the model when it is known.

Describing a backbone builds its architecture (on the meta device) and so imports its model library, which takes
seconds. The description depends only on what :meth:`tlkit.plugin.Backbone.memo_inputs` names (the model libraries,
local files) plus the name, the options and the code of tlkit and the plugin, so it is kept on disk under exactly
that key (:mod:`tlkit.host.memo`) and read back by later processes: ``tlkit backbones info`` and the "up to date"
check of an extraction rerun then import no model library.

Trust: a memo is used only when every input is in its key; a backbone that cannot name its inputs (``memo_inputs``
is ``None``, as for a hub model whose commit may move) is described afresh every time. Whenever the model is built
anyway, the description is computed from it, compared and the memo refreshed (:func:`check_live`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.canonical import canonical_json
from tlkit.contract.backbone import WEIGHTS_NONE, WEIGHTS_PRETRAINED, BackboneSpec
from tlkit.errors import TlkitError
from tlkit.host.memo import code_stamp, library_stamp, path_stamp, read_memo, write_memo

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone

KIND = "descriptions"
_ATTR = "_tlkit_description"


@dataclass(frozen=True)
class BlockInfo:
    """One block as ``tlkit backbones info`` and ``tlkit blocks`` show it: parameters and parameter tensors."""

    name: str
    params: int
    reaches_output: bool = True
    tensors: int = 0


@dataclass(frozen=True)
class Description:
    """What a backbone is, as data: its spec, its fingerprint and (when asked for) its blocks. ``memoised`` says
    whether it was read from the on-disk memo rather than computed."""

    spec: BackboneSpec
    fingerprint: str
    blocks: tuple[BlockInfo, ...] | None = None
    memoised: bool = False

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"spec": self.spec.to_dict(), "fingerprint": self.fingerprint}
        if self.blocks is not None:
            data["blocks"] = [[b.name, b.params, b.reaches_output, b.tensors] for b in self.blocks]
        return data

    @classmethod
    def from_data(cls, data: Any) -> Description | None:
        try:
            blocks = data.get("blocks")
            if blocks is not None and any(len(b) != 4 for b in blocks):
                blocks = None  # written before blocks had their tensor counts: described afresh when asked
            return cls(
                BackboneSpec(**data["spec"]),
                str(data["fingerprint"]),
                None if blocks is None else tuple(BlockInfo(str(n), int(p), bool(r), int(t)) for n, p, r, t in blocks),
                memoised=True,
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None


def memo_key(backbone: Backbone) -> dict[str, Any] | None:
    """Everything the description of ``backbone`` depends on, or ``None`` when it cannot be keyed (no memo)."""
    from tlkit import __version__

    inputs = backbone.memo_inputs()
    if inputs is None:
        return None
    libraries = {m: library_stamp(m) for m in inputs.get("libraries", ())}
    if any(stamp is None for stamp in libraries.values()):
        return None
    cls = type(backbone)
    modules = [c.__module__ for c in cls.__mro__ if c.__module__ not in ("builtins", "abc")]
    try:
        options = json.loads(canonical_json(backbone.init_kwargs()))
    except (TypeError, ValueError):
        return None
    return {
        "tlkit": __version__,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "code": code_stamp([*modules, "tlkit.canonical"]),
        "libraries": libraries,
        "paths": [path_stamp(p) for p in inputs.get("paths", ())],
        "name": backbone.name,
        "options": options,
    }


def _live(backbone: Backbone, blocks: bool) -> Description:
    """The description computed from the backbone itself (builds the architecture; blocks without weights)."""
    return Description(backbone.spec, backbone.fingerprint(), _built_blocks(backbone) if blocks else None)


def _built_blocks(backbone: Backbone) -> tuple[BlockInfo, ...]:
    """The blocks, counted on the built architecture (never downloads: "pretrained" may mean a download)."""
    published = backbone.weights_kind() == WEIGHTS_PRETRAINED
    arch = backbone.replace(weights=WEIGHTS_NONE) if published else backbone
    module = arch.module
    return tuple(BlockInfo(b.name, b.n_params(module), b.reaches_output, len(b.params)) for b in arch.blocks())


def describe_blocks(backbone: Backbone) -> tuple[BlockInfo, ...]:
    """The backbone's blocks with their parameter counts (``tlkit blocks``): from the description memo when the
    backbone can be keyed (:func:`memo_key`), else from the built architecture, without computing a fingerprint
    (which, for a hub model, asks the hub)."""
    if memo_key(backbone) is not None:
        return describe(backbone, blocks=True).blocks or ()
    return _built_blocks(backbone)


def describe(backbone: Backbone, *, blocks: bool = False) -> Description:
    """The backbone's description: from this process's earlier answer, from the on-disk memo when its key matches,
    else computed (and stored). ``blocks=True`` adds the blocks with their parameter counts."""
    known: Description | None = backbone.__dict__.get(_ATTR)
    if known is not None and (known.blocks is not None or not blocks):
        return known
    key = memo_key(backbone)
    found = Description.from_data(read_memo(KIND, key)) if key is not None else None
    if found is not None and (found.blocks is not None or not blocks):
        backbone.__dict__[_ATTR] = found
        return found
    live = _live(backbone, blocks)
    if key is not None:
        write_memo(KIND, key, live.to_data())
    backbone.__dict__[_ATTR] = live
    return live


def check_live(backbone: Backbone, fingerprint: str) -> None:
    """Before rows computed by the built model are written under ``fingerprint`` (from :func:`describe`): the
    model's own fingerprint must be the same. A memo that disagrees is replaced, and the run stops with a one-line
    error rather than write rows under the wrong key."""
    live = backbone.fingerprint()
    if live == fingerprint:
        return
    key = memo_key(backbone)
    if key is not None:
        write_memo(KIND, key, {"spec": backbone.spec.to_dict(), "fingerprint": live})
    backbone.__dict__.pop(_ATTR, None)
    raise TlkitError(
        f"{backbone.name}: its remembered description (fingerprint {fingerprint}) does not match the model "
        f"({live}); the memo is replaced now, so run the command again (and report this: the memo's key misses an "
        f"input)"
    )


__all__ = ["BlockInfo", "Description", "check_live", "describe", "describe_blocks", "memo_key"]
