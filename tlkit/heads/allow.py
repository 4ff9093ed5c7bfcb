"""The head a run file names is checked before anything is built from it: a run directory is data, not code.

A run's ``config.json`` records its head as ``{"name", "kind", "params", "in_dim", "n_classes"}``. Before
``tlkit predict``, ``evaluate``, ``export`` or ``finetune --init-head`` build or load anything from it,
:func:`check_head_record` requires

- a head **registered** under that name (by tlkit or an installed plugin), of the kind the run records;
- **plain** parameters (numbers, strings, booleans, lists; never an object to import);
- for the ``sklearn`` head, an estimator on the allow-list (:func:`tlkit.heads.sklearn_head.estimator_path`: an
  alias, a scikit-learn classifier, or a class the user allowed), checked without importing it.

Training checks the same rules where it builds the head (:func:`tlkit.heads.sklearn_head.sklearn_head`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tlkit.errors import BadInputError, TlkitError


def check_head_record(head: Any, where: Path, *, torch_only: bool = False) -> tuple[str, dict[str, Any]]:
    """The registered name and plain parameters of a run's ``head`` section; a one-line :class:`BadInputError`
    naming ``where`` (the config file) otherwise. ``torch_only``: refuse estimator heads (fine-tuned models)."""
    from tlkit.heads.sklearn_head import check_plain, estimator_path, sklearn_head
    from tlkit.host.registry import get_head_entry

    if not isinstance(head, Mapping) or not isinstance(head.get("name"), str):
        raise BadInputError(f"{where}: no head name in the run config; the run directory is damaged")
    name = str(head["name"])
    params = head.get("params") or {}
    try:
        entry = get_head_entry(name)
        if not isinstance(params, Mapping):
            raise BadInputError(f"head {name!r}: its parameters are a {type(params).__name__}, not a mapping")
        check_plain(params, f"head {name!r}")
        if entry.factory is sklearn_head:
            estimator_path(params.get("estimator", "logreg"))
        recorded = head.get("kind", "torch")
        if recorded != entry.kind:
            raise BadInputError(f"head {name!r} is of kind {entry.kind!r}, but the run records kind {recorded!r}")
        if torch_only and entry.kind != "torch":
            raise BadInputError(f"head {name!r} is not a torch head; a fine-tuned model only has torch heads")
        for size in ("in_dim", "n_classes"):
            if not (isinstance(head.get(size), int) and not isinstance(head.get(size), bool) and head[size] > 0):
                raise BadInputError(f"head {name!r}: {size} {head.get(size)!r} is not a positive integer")
    except TlkitError as exc:
        raise BadInputError(f"{where}: {exc.template or exc}", params=exc.params) from exc
    return name, dict(params)


__all__ = ["check_head_record"]
