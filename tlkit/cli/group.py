"""The root ``tlkit`` Click group, its error handling and the shared output helpers (tables, JSON).

Heavy libraries (torch, timm, transformers) are imported inside commands, never here, so ``tlkit --help``
stays fast. Library errors (:class:`tlkit.errors.TlkitError`) become one-line messages with exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from typing import Any, Literal

import click

from tlkit import __version__
from tlkit.errors import TlkitError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _format_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


class TlkitGroup(click.Group):
    """A group that turns library errors into clean messages and adds plugin commands on first use."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self.parent_is_root and not TlkitGroup._plugins_added:
            TlkitGroup._plugins_added = True
            warnings.formatwarning = _format_warning
            from tlkit.host.manager import register_commands

            register_commands(self)  # each plugin on its own: a failing one is marked broken, with a warning

    @property
    def parent_is_root(self) -> bool:
        return self.name == "tlkit"

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def _message(self, ctx: click.Context, exc: TlkitError) -> str:
        """The library names parameters; the user typed flags. Name the flags of the command that failed."""
        if not exc.params:
            return str(exc)
        command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        flags = {
            p.name: max(p.opts, key=len)
            for p in getattr(command, "params", [])
            if isinstance(p, click.Option) and p.name in exc.params
        }
        return exc.for_flags(flags)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TlkitError as exc:
            if os.environ.get("TLKIT_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
            raise click.ClickException(self._message(ctx, exc)) from None
        except ImportError as exc:  # a plugin's missing dependency is one line; tlkit's own stays a traceback
            from tlkit.host.manager import debug, explain_import_error

            missing = explain_import_error(exc)
            if missing is None or debug():
                raise
            raise click.ClickException(str(missing)) from None
        except (RuntimeError, MemoryError) as exc:  # out of memory or shared memory outside the library's checks
            from tlkit.runtime.batching import resource_error

            short = resource_error(exc)
            if short is None or os.environ.get("TLKIT_DEBUG", "") not in ("", "0"):
                raise
            raise click.ClickException(self._message(ctx, short)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=TlkitGroup, name="tlkit", context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="tlkit")
def cli() -> None:
    """tlkit: adapt pretrained models to your data.

    Feature extraction (frozen backbone, cached features, a small head) or fine-tuning (unfreeze chosen blocks at a
    lower learning rate), for image, text and audio backbones from plugins.
    """
    warnings.formatwarning = _format_warning


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


#: Width of a table written to a pipe or file: no terminal to fit, so no cell is wrapped or cut.
PIPE_WIDTH = 10_000


def print_table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A table on stdout. No cell but the last column's is cut or wrapped (names stay whole, to copy); on a terminal
    the last column wraps at words to its width, and in a pipe or file nothing wraps (each row is one line)."""
    from rich.console import Console
    from rich.table import Table

    cells = [[f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in row] for row in rows]
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(soft_wrap=True, width=PIPE_WIDTH)
    table = Table(title=title, show_lines=False, header_style="bold")
    for i, col in enumerate(columns):
        justify: Literal["left", "right"] = "right" if rows and isinstance(rows[0][i], int | float) else "left"
        if i < len(columns) - 1:
            widest = max([len(col), *(len(r[i]) for r in cells)])
            table.add_column(col, justify=justify, no_wrap=True, min_width=widest)
        else:
            table.add_column(col, justify=justify, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def draw_bars() -> bool:
    """Bars only on a terminal: in logs and pipes a transient bar leaves nothing useful, only blank lines."""
    return bool(stderr_console().is_terminal)


class ProgressBar:
    """One transient progress bar on stderr, started when made: a title, the bar, done/total, a free-text ``info``
    field and a clock (time elapsed, or time remaining with ``remaining=True``). :meth:`close` removes it."""

    def __init__(self, title: str, total: int, *, info: str = "", remaining: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        clock = TimeRemainingColumn() if remaining else TimeElapsedColumn()
        columns = (TextColumn(title), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), clock)
        self.bar = Progress(*columns, console=stderr_console(), transient=True)
        self.bar.start()
        self.task = self.bar.add_task(title, total=total, info=info)

    def update(self, completed: int, info: str, total: int | None = None) -> None:
        self.bar.update(self.task, completed=completed, total=total, info=info)

    def close(self) -> None:
        self.bar.stop()
