"""The ``sklearn`` head: a scikit-learn classifier, by alias or import path, fitted on cached features.

Which classes may be constructed is a closed list, checked before anything is imported (:func:`estimator_path`):
the aliases, classifiers under ``sklearn.``, and classes the user allows explicitly (:func:`allowing`,
``--allow-estimator``, ``TLKIT_ALLOW_ESTIMATORS``). A run's ``config.json`` can never choose other code.

Fitted estimators are saved with `skops <https://skops.readthedocs.io>`_ (``head.skops``, with a checksum
sidecar), never with pickle. Loading uses skops' own trusted-type check with a minimal list on top of its defaults
(:data:`EXTRA_TRUSTED` and the allowed classes), and refuses every stored function (``FunctionTransformer`` funcs,
NumPy ufuncs, ``builtins`` functions, partials, methods): a head file is data, not code.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError, ConfigError, NotInstalled

if TYPE_CHECKING:
    import numpy as np

ESTIMATOR_FILE = "head.skops"
#: Import paths under this prefix that are classifier classes may be constructed without being allowed.
SKLEARN_PREFIX = "sklearn."
#: The environment variable listing allowed estimator classes, comma-separated.
ALLOW_ENV = "TLKIT_ALLOW_ESTIMATORS"
#: Types trusted on load beyond skops' defaults (which cover scikit-learn's estimators, NumPy arrays and dtypes):
#: the fitted tree of the ``rf`` alias (and the other tree ensembles).
EXTRA_TRUSTED = ("sklearn.tree._tree.Tree",)
#: skops nodes that hold a callable; none is ever loaded, trusted type or not.
FUNCTION_NODES = ("FunctionNode", "MethodNode", "PartialNode", "OperatorFuncNode")
#: skops stores a type (or a builtin function!) as a value in a ``TypeNode``; only these types, and NumPy's scalar
#: types, may appear there.
PLAIN_TYPES = frozenset(f"builtins.{t}" for t in ("str", "int", "float", "bool", "complex", "bytes", "NoneType"))
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: What to do about a damaged or refused head file.
HEAD_FIX = "copy the run directory again, or rerun tlkit train"


@dataclass(frozen=True)
class Alias:
    path: str
    defaults: dict[str, Any] = field(default_factory=dict)
    scale: bool = True  # standardise features first (linear models and SVMs converge far better)


ALIASES: dict[str, Alias] = {
    # the plain script, scikit-learn's defaults (C=1, no scaler): a StandardScaler in front overfits normalised
    # embeddings (0.711 against 0.752 on MiniLM, issue 14); --param scale=true puts it back
    "logreg": Alias("sklearn.linear_model.LogisticRegression", {"max_iter": 3000}, scale=False),
    "svm": Alias("sklearn.svm.SVC"),
    "ridge": Alias("sklearn.linear_model.RidgeClassifier"),
    "rf": Alias("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 200}, scale=False),
    "knn": Alias("sklearn.neighbors.KNeighborsClassifier", {"metric": "cosine"}, scale=False),
}


def sklearn_head(estimator: str = "logreg", scale: bool | None = None, **params: Any) -> Any:
    """An unfitted scikit-learn classifier.

    :param estimator: an alias (``logreg``, ``svm``, ``ridge``, ``rf``, ``knn``), the import path of a
        scikit-learn classifier (``sklearn.svm.LinearSVC``), or of another classifier the user allowed
        (:func:`allowing`, ``--allow-estimator``, ``TLKIT_ALLOW_ESTIMATORS``).
    :param scale: put a ``StandardScaler`` in front (default: on for the linear and SVM aliases, off otherwise).
    :param params: keyword arguments for the estimator (``--param C=0.5``): plain values only.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    alias = ALIASES.get(estimator)
    cls = import_estimator(estimator)
    kwargs = {**(alias.defaults if alias else {}), **params}
    valid = sorted(cls._get_param_names()) if hasattr(cls, "_get_param_names") else []
    unknown = [k for k in kwargs if valid and k not in valid]
    if unknown:
        raise ConfigError(
            f"head sklearn ({cls.__name__}): unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    check_plain(kwargs, f"head sklearn ({cls.__name__})")
    try:
        est = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"head sklearn ({cls.__name__}): bad parameters {kwargs} ({exc})") from exc
    use_scale = (alias.scale if alias else False) if scale is None else bool(scale)
    return make_pipeline(StandardScaler(), est) if use_scale else est


# -- the allow-list ----------------------------------------------------------------------------------------------
_ALLOWED: ContextVar[tuple[str, ...]] = ContextVar("tlkit_allowed_estimators", default=())


@contextlib.contextmanager
def allowing(paths: Iterable[str] | None) -> Iterator[None]:
    """Trust the estimator classes at ``paths`` (import paths, e.g. ``xgboost.XGBClassifier``) in the ``with``
    block: :func:`sklearn_head` may construct them and :func:`load_estimator` may load them from ``head.skops``.

    What ``--allow-estimator`` does on the command line; ``TLKIT_ALLOW_ESTIMATORS`` (comma-separated) does the same
    for a whole session.
    """
    token = _ALLOWED.set(_ALLOWED.get() + tuple(normalize_path(p) for p in paths or ()))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def allowed_estimators() -> frozenset[str]:
    """The import paths the user allowed: :func:`allowing` blocks and ``TLKIT_ALLOW_ESTIMATORS``."""
    from_env = [p for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return frozenset(_ALLOWED.get()) | {normalize_path(p) for p in from_env}


def normalize_path(path: str) -> str:
    """``a.b:C`` or ``a.b.C`` as ``a.b.C``; anything but a dotted Python name is a :class:`ConfigError`."""
    text = str(path).strip().replace(":", ".", 1) if isinstance(path, str) else ""
    if not _DOTTED.fullmatch(text) or "." not in text:
        raise ConfigError(
            f"head sklearn: unknown estimator {path!r}; use an alias ({', '.join(ALIASES)}) or an import path such "
            f"as sklearn.svm.LinearSVC"
        )
    return text


def estimator_path(estimator: str) -> str:
    """The import path of an allowed estimator, checked WITHOUT importing anything: an alias, a path under
    ``sklearn.``, or a path the user allowed. Anything else is a :class:`ConfigError` naming the way to allow it."""
    alias = ALIASES.get(estimator) if isinstance(estimator, str) else None
    if alias is not None:
        return alias.path
    path = normalize_path(estimator)
    if path.startswith(SKLEARN_PREFIX) or path in allowed_estimators():
        return path
    raise ConfigError(
        f"head sklearn: estimator {path!r} is outside scikit-learn and not allowed; if you trust it, allow it "
        f"with {{param}} {path} (or {ALLOW_ENV}={path})",
        param="allow_estimators",
    )


def import_estimator(estimator: str) -> type:
    """The classifier class of an alias or import path: checked by :func:`estimator_path` before the import, and
    checked to be a scikit-learn classifier class before anything is constructed."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    path = estimator_path(estimator)
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"head sklearn: cannot import {module_name!r} for estimator {path!r} ({exc})") from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"head sklearn: {module_name} has no class {attr!r}")
    if not (issubclass(cls, BaseEstimator) and issubclass(cls, ClassifierMixin)):
        raise ConfigError(f"head sklearn: {path!r} is not a scikit-learn classifier; pick a classifier")
    return cls


def check_plain(params: Mapping[str, Any], where: str) -> None:
    """Refuse parameter values that are not plain data (numbers, strings, booleans, None, lists, dicts)."""
    for key, value in params.items():
        if not _is_plain(value):
            raise ConfigError(
                f"{where}: parameter {key!r} is a {type(value).__name__}; parameters must be plain values "
                f"(numbers, strings, booleans, lists)"
            )


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


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
    """Save a fitted estimator in skops' format, atomically, with a checksum sidecar; refuse (at training time) an
    estimator whose file :func:`load_estimator` would not load back."""
    from tlkit.runs.checksums import write_checked

    sio = _skops()

    def write(tmp: str) -> None:
        sio.dump(est, tmp)
        _check_types(tmp, sio, fix="allow them if you trust them, or choose another estimator", shown=path)

    write_checked(path, write)


def load_estimator(path: str | os.PathLike[str], fix: str = HEAD_FIX, checksum: bool = False) -> Any:
    """Load a skops file, refusing stored functions and any type outside skops' defaults, :data:`EXTRA_TRUSTED` and
    the allowed estimator classes; ``checksum``: check the file against its sidecar first (a run's ``head.skops``).
    Every refusal is a one-line :class:`BadInputError`."""
    from tlkit.runs.rundir import check_file

    sio = _skops()
    if checksum:
        check_file(path, fix)
    elif not os.path.isfile(path):
        raise BadInputError(f"{path}: estimator file missing; is this a complete tlkit run directory?")
    path = os.fspath(path)
    trusted = _check_types(path, sio, fix=f"if you trust the file, allow them with --allow-estimator; otherwise {fix}")
    try:
        return sio.load(path, trusted=trusted)
    except Exception as exc:
        raise BadInputError(f"{path}: not a loadable skops file ({_first_line(exc)}); {fix}") from exc


def _check_types(path: str, sio: Any, fix: str, shown: str | os.PathLike[str] | None = None) -> list[str]:
    """The file's types outside skops' defaults, once each is known to be trusted; a :class:`BadInputError`
    naming the functions or untrusted types otherwise (and the file as ``shown``). Only the file's JSON schema is
    read, nothing is imported."""
    shown = path if shown is None else shown
    functions = sorted(_stored_functions(path, shown))
    if functions:
        raise BadInputError(
            f"{shown}: holds functions ({', '.join(functions)}); a head file is data, never code; refusing to load it"
        )
    try:
        untrusted = list(sio.get_untrusted_types(file=path))
    except Exception as exc:
        raise BadInputError(f"{shown}: not a readable skops file ({_first_line(exc)})") from exc
    trusted = set(EXTRA_TRUSTED) | allowed_estimators()
    refused = [t for t in untrusted if t not in trusted]
    if refused:
        raise BadInputError(
            f"{shown}: holds types outside scikit-learn's estimators ({', '.join(refused)}); refusing to load it; {fix}"
        )
    return untrusted


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _stored_functions(path: str, shown: str | os.PathLike[str]) -> set[str]:
    """The ``module.name`` of every callable node in a skops file's schema (a zip holding ``schema.json``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            schema = json.loads(zf.read("schema.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"{shown}: not a readable skops file ({_first_line(exc)})") from exc
    plain = PLAIN_TYPES | _numpy_scalar_types()
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = f"{node.get('__module__', '?')}.{node.get('__class__', '?')}"
            loader = node.get("__loader__")
            if loader in FUNCTION_NODES or (loader == "TypeNode" and name not in plain):
                found.add(name)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _numpy_scalar_types() -> set[str]:
    import numpy as np

    return {f"numpy.{t.__name__}" for t in set(np.sctypeDict.values())}
