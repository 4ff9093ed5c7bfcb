"""LP-FT: start fine-tuning from a head that ``tlkit train`` fitted on cached features (a linear probe).

A head run (config kind ``"head"``) holds ``head.safetensors`` and a config with ``backbone`` {name, weights,
options, fingerprint}, ``head`` {name, kind, params, in_dim, n_classes} and ``class_names``. Its fingerprint must
equal the fine-tuned backbone's: a probe trained on other features (other weights, preprocessing or pooling) would
start from the wrong place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, FingerprintMismatchError
from tlkit.runs.rundir import HEAD_WEIGHTS, load_tensors, read_config

if TYPE_CHECKING:
    import torch

    from tlkit.contract.backbone import Backbone


@dataclass
class ProbeHead:
    """A trained head to start from: its registered name, parameters and weights."""

    run_dir: Path
    name: str
    params: dict[str, Any]
    in_dim: int
    n_classes: int
    state: dict[str, torch.Tensor]
    fingerprint: str


def load_probe_head(run_dir: str | os.PathLike[str], backbone: Backbone, class_names: Sequence[str]) -> ProbeHead:
    """Read a head run and check that it fits ``backbone`` and the training classes; clear errors otherwise."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    _check(config, f"{{param}} {run_dir}", backbone, class_names)
    head = config["head"]
    state = load_tensors(run_dir / HEAD_WEIGHTS)
    if state and all(k.startswith("head.") for k in state):
        state = {k[5:]: v for k, v in state.items()}
    return ProbeHead(
        run_dir=run_dir,
        name=str(head["name"]),
        params=dict(head.get("params") or {}),
        in_dim=int(head["in_dim"]),
        n_classes=int(head["n_classes"]),
        state=state,
        fingerprint=str(config["backbone"]["fingerprint"]),
    )


def _check(config: dict[str, Any], where: str, backbone: Backbone, class_names: Sequence[str]) -> None:
    """A head run, of a torch head, on the final embedding of this very backbone, for the same classes.
    ``where`` names the parameter as ``{param}`` (the CLI shows the flag)."""
    if config.get("kind") != "head":
        raise BadInputError(
            f"{where}: a {config.get('kind')!r} run; pass a head run written by tlkit train",
            param="init_head",
        )
    head = config.get("head") or {}
    if head.get("kind", "torch") != "torch":
        raise BadInputError(
            f"{where}: head {head.get('name')!r} is a scikit-learn estimator; fine-tuning needs a torch "
            f"head (train a linear or mlp probe)",
            param="init_head",
        )
    layer = config.get("layer")
    if layer not in (None, "", "final", "last"):
        raise BadInputError(
            f"{where}: the head was trained on layer {layer!r}, but fine-tuning feeds the final embedding; train "
            f"the probe on the final layer",
            param="init_head",
        )
    recorded = (config.get("backbone") or {}).get("fingerprint")
    actual = backbone.fingerprint()
    if recorded != actual:
        bname = (config.get("backbone") or {}).get("name", "?")
        raise FingerprintMismatchError(
            f"{where}: its head was trained on features of {bname} with fingerprint {recorded}, but "
            f"this backbone ({backbone.name}, weights {backbone.weights}) has fingerprint {actual}; train the probe "
            f"on a cache extracted with the same backbone, weights and preprocessing",
            param="init_head",
        )
    probe_classes = list(config.get("class_names") or [])
    if probe_classes != list(class_names):
        raise BadInputError(
            f"{where}: the probe's classes {probe_classes} differ from the training data's "
            f"{list(class_names)}; train the probe on the same classes",
            param="init_head",
        )
    if int(head.get("in_dim", -1)) != backbone.spec.embed_dim:
        raise BadInputError(
            f"{where}: the head takes {head.get('in_dim')}-d features but {backbone.name} gives "
            f"{backbone.spec.embed_dim}-d",
            param="init_head",
        )
