"""The ``sklearn`` head: any scikit-learn classifier, by alias or import path, fitted on cached features.

Fitted estimators are saved with `skops <https://skops.readthedocs.io>`_ (``head.skops``), never with pickle.
Loading trusts only types from scikit-learn, NumPy and SciPy; anything else in a file is refused.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError, NotInstalled

if TYPE_CHECKING:
    import numpy as np

ESTIMATOR_FILE = "head.skops"
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")


@dataclass(frozen=True)
class Alias:
    path: str
    defaults: dict[str, Any] = field(default_factory=dict)
    scale: bool = True  # standardise features first (linear models and SVMs converge far better)


ALIASES: dict[str, Alias] = {
    "logreg": Alias("sklearn.linear_model.LogisticRegression", {"max_iter": 2000}),
    "svm": Alias("sklearn.svm.SVC"),
    "ridge": Alias("sklearn.linear_model.RidgeClassifier"),
    "rf": Alias("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 200}, scale=False),
    "knn": Alias("sklearn.neighbors.KNeighborsClassifier", {"metric": "cosine"}, scale=False),
}


def sklearn_head(estimator: str = "logreg", scale: bool | None = None, **params: Any) -> Any:
    """An unfitted scikit-learn classifier.

    :param estimator: an alias (``logreg``, ``svm``, ``ridge``, ``rf``, ``knn``) or an import path
        (``sklearn.svm.LinearSVC`` or ``package.module:Class``).
    :param scale: put a ``StandardScaler`` in front (default: on for the linear and SVM aliases, off otherwise).
    :param params: keyword arguments for the estimator (``--param C=0.5``).
    """
    from sklearn.base import is_classifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    alias = ALIASES.get(estimator)
    cls = import_estimator(alias.path if alias else estimator)
    kwargs = {**(alias.defaults if alias else {}), **params}
    valid = sorted(cls._get_param_names()) if hasattr(cls, "_get_param_names") else []
    unknown = [k for k in kwargs if valid and k not in valid]
    if unknown:
        raise ConfigError(
            f"head sklearn ({cls.__name__}): unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    try:
        est = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"head sklearn ({cls.__name__}): bad parameters {kwargs} ({exc})") from exc
    if not is_classifier(est):
        raise ConfigError(f"head sklearn: {estimator!r} is not a scikit-learn classifier; pick a classifier")
    use_scale = (alias.scale if alias else False) if scale is None else bool(scale)
    return make_pipeline(StandardScaler(), est) if use_scale else est


def import_estimator(path: str) -> type:
    """The class at ``path`` (``a.b.C`` or ``a.b:C``), with a clear error naming the aliases."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(
            f"head sklearn: unknown estimator {path!r}; use an alias ({', '.join(ALIASES)}) "
            f"or an import path such as sklearn.svm.LinearSVC"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"head sklearn: cannot import {module_name!r} for estimator {path!r} ({exc})") from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"head sklearn: {module_name} has no class {attr!r}")
    return cls


def seed_estimator(est: Any, seed: int) -> None:
    """Set every ``random_state`` parameter the user left unset (plain estimators and pipelines)."""
    params = est.get_params()
    updates = {k: int(seed) for k, v in params.items() if (k == "random_state" or k.endswith("__random_state"))}
    updates = {k: v for k, v in updates.items() if params[k] is None}
    if updates:
        est.set_params(**updates)


def estimator_scores(est: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities ``[N, n_classes]``: ``predict_proba`` where the estimator has it, otherwise a softmax
    of ``decision_function`` (scores, not calibrated probabilities). Classes unseen in training get 0."""
    import numpy as np

    classes = np.asarray(est.classes_, dtype=np.int64)
    if hasattr(est, "predict_proba"):
        probs = np.asarray(est.predict_proba(x), dtype=np.float64)
    else:
        scores = np.asarray(est.decision_function(x), dtype=np.float64)
        if scores.ndim == 1:  # binary: the score of classes_[1]
            scores = np.stack([-scores / 2, scores / 2], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=1, keepdims=True)
    out = np.zeros((len(x), n_classes), dtype=np.float64)
    out[:, classes] = probs
    return out


def _skops() -> Any:
    try:
        import skops.io as sio
    except ImportError as exc:
        raise NotInstalled("skops", purpose="saving and loading scikit-learn heads without pickle") from exc
    return sio


def save_estimator(est: Any, path: str | os.PathLike[str]) -> None:
    """Save a fitted estimator in skops' secure format, atomically."""
    from tlkit.fileio import atomic_write_with

    sio = _skops()
    atomic_write_with(path, lambda tmp: sio.dump(est, tmp))


def load_estimator(path: str | os.PathLike[str]) -> Any:
    """Load a skops file, trusting only scikit-learn, NumPy and SciPy types."""
    sio = _skops()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: estimator file missing; is this a complete tlkit run directory?")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise BadInputError(f"{path}: not a readable skops file ({type(exc).__name__}: {exc})") from exc
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise BadInputError(
            f"{path}: holds types outside scikit-learn/NumPy/SciPy ({', '.join(refused)}); refusing to load it. "
            f"If you trust the file, load it with skops.io.load(path, trusted=[...])"
        )
    return sio.load(path, trusted=untrusted)
