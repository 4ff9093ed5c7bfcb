"""The head contract and the built-in torch heads.

A head maps an embedding ``[N, in_dim]`` to class logits ``[N, n_classes]`` (``kind="torch"``), or is a
scikit-learn classifier fitted on cached features (``kind="estimator"``). Plugins add heads through the
``tlkit_register_heads`` hook.

A torch head that is not trained by gradient descent (the cosine k-NN head) defines ``fit_features(x, y)``:
training calls it once with every training feature instead of running an optimiser.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError
from tlkit.host.registry import get_head_entry

if TYPE_CHECKING:
    from torch import nn

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


def linear_head(in_dim: int, n_classes: int) -> nn.Module:
    """A single linear layer."""
    from torch import nn

    return nn.Linear(in_dim, n_classes)


def auto_head(in_dim: int, n_classes: int) -> nn.Module:
    """The ``auto`` head as saved: one linear layer (a logistic regression, its L2 strength chosen by
    cross-validation when it is trained; see :mod:`tlkit.heads.auto`)."""
    return linear_head(in_dim, n_classes)


def mlp_head(
    in_dim: int,
    n_classes: int,
    hidden: int | Sequence[int] = 256,
    activation: str = "relu",
    dropout: float = 0.5,
) -> nn.Module:
    """Hidden layers with an activation and dropout; the default is the classic Dense 256, ReLU, Dropout 0.5."""
    from torch import nn

    if activation not in ACTIVATIONS:
        raise ConfigError(f"mlp activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
    sizes = [int(hidden)] if isinstance(hidden, int | str) else [int(h) for h in hidden]
    act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    prev = in_dim
    for size in sizes:
        layers += [nn.Linear(prev, size), act(), nn.Dropout(float(dropout))]
        prev = size
    layers.append(nn.Linear(prev, n_classes))
    return nn.Sequential(*layers)


def knn_head(in_dim: int, n_classes: int, k: int = 20, temperature: float = 0.07, weighting: str = "softmax") -> Any:
    """Cosine k-nearest neighbours over the training features (see :class:`tlkit.heads.knn.KNNHead`)."""
    from tlkit.heads.knn import KNNHead

    return KNNHead(in_dim, n_classes, k=k, temperature=temperature, weighting=weighting)


def is_fitted_head(head: Any) -> bool:
    """Whether a torch head is fitted once on all training features (``fit_features``) rather than trained."""
    return callable(getattr(head, "fit_features", None))


def build_head(name: str, in_dim: int, n_classes: int, **params: Any) -> Any:
    """Build a registered head: an ``nn.Module`` for torch heads, an unfitted estimator for estimator heads."""
    entry = get_head_entry(name)
    try:
        if entry.kind == "torch":
            return entry.factory(in_dim, n_classes, **params)
        return entry.factory(**params)
    except TypeError as exc:
        accepted = _accepted_params(entry.factory, skip=2 if entry.kind == "torch" else 0)
        hint = f"; it accepts {', '.join(accepted)}" if accepted else ""
        raise ConfigError(f"head {name!r}: bad parameters {params} ({exc}){hint}") from exc


def load_head_state(head: Any, state: Any, path: Any, name: str) -> None:
    """Load a run's saved ``state`` into a freshly built torch ``head`` named ``name``; weights that do not fit are a
    one-line error naming ``path`` (the run directory is damaged)."""
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(
            f"{path}: weights do not fit head {name} ({str(exc).splitlines()[0]}); the run directory is damaged"
        ) from exc


def _accepted_params(factory: Any, skip: int) -> list[str]:
    import inspect

    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    names = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names[skip:]


# -- parameters ------------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A ``--param`` value: JSON (numbers, true/false/null, lists), Python's True/False/None, ``a,b`` lists,
    otherwise the string itself."""
    text = text.strip()
    python_words = {"True": True, "False": False, "None": None}
    if text in python_words:
        return python_words[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text and not text.startswith(("[", "{", "(")):
        return [parse_value(part) for part in text.split(",") if part.strip()]
    return text


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """``["k=5", "hidden=512,256"]`` -> ``{"k": 5, "hidden": [512, 256]}``, with a clear error for a bad pair."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "a").replace(".", "a").isalnum() or key[0].isdigit():
            raise ConfigError(f"--param {pair!r}: expected KEY=VALUE with a Python name as KEY, e.g. --param C=0.5")
        if not value.strip():
            raise ConfigError(f"--param {pair!r}: no value after '='; e.g. --param {key}=1")
        params[key] = parse_value(value)
    return params


def split_head_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"sklearn:logreg"`` -> ``("sklearn", {"estimator": "logreg"})``; other names pass through."""
    base, sep, rest = name.partition(":")
    if sep and base == "sklearn" and rest:
        return base, {"estimator": rest}
    return name, {}
