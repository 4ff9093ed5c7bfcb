"""tlkit's exception classes.

The library raises these; the CLI turns each into a one-line message (exit code 1) instead of a traceback.
Every message names the thing at fault and, where there is one, the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence


class TlkitError(Exception):
    """Base class for every error tlkit raises on purpose.

    A message about parameters writes each one as ``{name}`` and lists the names in ``params=`` (or one name in
    ``param=``, written ``{param}`` or ``{name}``). The library's message then names the parameters
    (``give schedule or gradual, not both``) and the CLI, which knows which flag sets each, names the flags
    (``give --schedule or --gradual, not both``) through :meth:`for_flags`.
    """

    def __init__(self, *args: object, param: str | None = None, params: Sequence[str] = ()) -> None:
        self.params: tuple[str, ...] = tuple(params) or ((param,) if param else ())
        self.template: str | None = None
        if self.params and args and isinstance(args[0], str):
            self.template = args[0]
            args = (self._render({}), *args[1:])
        super().__init__(*args)

    @property
    def param(self) -> str | None:
        """The first parameter the message is about (``None`` when it is about none)."""
        return self.params[0] if self.params else None

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """The message with each parameter written as its flag in ``flags`` (``--name-like-this`` when absent)."""
        return self._render({p: flags.get(p, "--" + p.replace("_", "-")) for p in self.params})

    def for_flag(self, flag: str) -> str:
        """The message with the first parameter written as ``flag``."""
        return self.for_flags({self.params[0]: flag} if self.params else {})

    def _render(self, names: Mapping[str, str]) -> str:
        if self.template is None:
            return str(self)
        text = self.template.replace("{param}", names.get(self.params[0], self.params[0]))
        for p in self.params:
            text = text.replace("{" + p + "}", names.get(p, p))
        return text


class UnknownNameError(TlkitError, KeyError):
    """A backbone, head, reader or block name that nothing provides."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        known = sorted(set(known))
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        elif known and len(known) <= 12:
            msg += f"; available: {', '.join(known)}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateNameError(TlkitError):
    """Two plugins registered the same name."""


class PluginError(TlkitError):
    """A plugin misbehaved (bad registration, misspelled hook)."""


class BadInputError(TlkitError):
    """Input data that cannot be used: wrong path, empty folder, missing column, corrupt file under --on-error fail."""


class BadItemError(TlkitError):
    """One item (file, row) could not be decoded. Readers raise it; the engine skips or fails per --on-error."""

    def __init__(self, item_id: str, reason: str) -> None:
        self.item_id, self.reason = item_id, reason
        super().__init__(f"{item_id}: {reason}")


class CacheError(TlkitError):
    """A feature cache that is missing, incomplete, locked, corrupt or of the wrong kind."""


class FingerprintMismatchError(TlkitError):
    """Two things that must come from the same backbone and preprocessing do not."""


class ConfigError(TlkitError):
    """Conflicting or invalid options."""


class NotInstalled(TlkitError):
    """An optional dependency is missing; the message gives the exact pip command."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        # tlkit is installed from a checkout (it is not on PyPI), so the command that always works names the package.
        extra_hint = f" (or, in a tlkit checkout, pip install '.[{extra}]')" if extra else ""
        super().__init__(f"{package} is needed{what}: pip install {package}{extra_hint}")
