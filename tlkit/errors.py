"""tlkit's exception classes.

The library raises these; the CLI turns each into a one-line message (exit code 1) instead of a traceback.
Every message names the thing at fault and, where there is one, the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TlkitError(Exception):
    """Base class for every error tlkit raises on purpose.

    A message that is about one parameter writes it as ``{param}`` and passes ``param=`` (the Python parameter
    name): the library's message then names the parameter (``precision='x' ...``), and the CLI, which knows which
    flag set it, names the flag instead (``--precision 'x' ...``) through :meth:`for_flag`.
    """

    def __init__(self, *args: object, param: str | None = None) -> None:
        self.param = param
        if param is not None and args and isinstance(args[0], str):
            self.template: str | None = args[0]
            args = (args[0].replace("{param}", param), *args[1:])
        else:
            self.template = None
        super().__init__(*args)

    def for_flag(self, flag: str) -> str:
        """The message with the parameter written as the CLI flag ``flag``."""
        return self.template.replace("{param}", flag) if self.template is not None else str(self)


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
        target = f"tlkit[{extra}]" if extra else package
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"{package} is needed{what}: pip install '{target}'")
