"""The ``tlkit`` command line (Click): options in, library calls, one-line errors and progress out.

``cli`` is the root group with every command attached; ``main`` is the console-script entry point.
"""

from tlkit.cli.app import cli, main

__all__ = ["cli", "main"]
