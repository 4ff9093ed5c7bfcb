"""The ``tlkit`` command line. Commands parse options, call the library and render results; nothing else.

Heavy libraries (torch, timm, transformers) are imported inside commands, never here, so ``tlkit --help``
stays fast. Library errors (:class:`tlkit.errors.TlkitError`) become one-line messages with exit code 1.
"""

from __future__ import annotations

from tlkit.cli import discover, extract, finetune, train
from tlkit.cli.group import cli

for _module in (discover, extract, train, finetune):
    _module.register(cli)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tlkit")


__all__ = ["cli", "main"]
