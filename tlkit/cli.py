"""The ``tlkit`` command line. Commands parse options, call the library and render results; nothing else.

Heavy libraries (torch, timm, transformers) are imported inside commands, never here, so ``tlkit --help``
stays fast. Library errors (:class:`tlkit.errors.TlkitError`) become one-line messages with exit code 1.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

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
            from tlkit.plugins import get_plugin_manager

            try:
                get_plugin_manager().hook.tlkit_register_commands(cli=self)
            except TlkitError as exc:
                click.echo(f"warning: {exc}", err=True)

    @property
    def parent_is_root(self) -> bool:
        return self.name == "tlkit"

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TlkitError as exc:
            raise click.ClickException(str(exc)) from None
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
    warnings.formatwarning = _format_warning  # type: ignore[assignment]


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if rows and isinstance(rows[0][i], int | float) else "left")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in row))
    Console(soft_wrap=True).print(table)


# -- plugins --------------------------------------------------------------------------------------------------
@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_cmd(as_json: bool) -> None:
    """List discovered plugins: name, version, hooks and status (ok, broken, disabled)."""
    from tlkit.plugins import list_plugins

    infos = list_plugins()
    if as_json:
        echo_json([i.to_dict() for i in infos])
        return
    rows = [
        [
            i.name,
            i.dist,
            i.version,
            i.status + (f": {i.error}" if i.error else ""),
            ", ".join(h.removeprefix("tlkit_") for h in i.hooks),
        ]
        for i in infos
    ]
    print_table(["plugin", "distribution", "version", "status", "hooks"], rows)


# -- backbones ------------------------------------------------------------------------------------------------
@cli.group("backbones", cls=TlkitGroup, invoke_without_command=True)
@click.option("--modality", type=click.Choice(["image", "text", "audio"]), help="Only this modality.")
@click.option("--filter", "pattern", metavar="GLOB", help="Glob on the name, e.g. 'timm/convnext*'.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def backbones_cmd(ctx: click.Context, modality: str | None, pattern: str | None, as_json: bool) -> None:
    """List backbones. Open-ended families (any timm model, any HF id) are listed through --filter."""
    if ctx.invoked_subcommand is not None:
        return
    from tlkit.registry import list_backbones

    entries = list_backbones(pattern, modality)
    if as_json:
        echo_json([{"name": e.name, "modality": e.modality, "plugin": e.plugin, "summary": e.summary} for e in entries])
        return
    if not entries:
        raise click.ClickException(f"no backbones match {pattern!r}" if pattern else "no backbones installed")
    print_table(["name", "modality", "plugin", "summary"], [[e.name, e.modality, e.plugin, e.summary] for e in entries])


@backbones_cmd.command("info")
@click.argument("name")
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="Weights used to build it for inspection: pretrained, none or a local path.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backbones_info_cmd(name: str, weights: str, as_json: bool) -> None:
    """Show a backbone's spec: modality, embedding size, preprocessing, pooling, weights, blocks."""
    from tlkit.api import get_backbone

    bb = get_backbone(name, weights=weights)
    spec = bb.spec.to_dict()
    blocks = [{"name": b.name, "params": b.n_params(bb.module)} for b in bb.blocks()]
    info = {**spec, "fingerprint": bb.fingerprint(), "blocks": blocks}
    if as_json:
        echo_json(info)
        return
    for key in ("name", "modality", "embed_dim", "pooling", "weights", "source", "license", "fingerprint"):
        click.echo(f"{key:12} {info.get(key)}")
    click.echo("preprocess")
    for k, v in spec["preprocess"].items():
        click.echo(f"  {k:18} {v}")
    click.echo(f"blocks       {len(blocks)}: " + ", ".join(b["name"] for b in blocks))


# -- heads ----------------------------------------------------------------------------------------------------
@cli.command("heads")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def heads_cmd(as_json: bool) -> None:
    """List head types."""
    from tlkit.api import list_heads

    entries = list_heads()
    if as_json:
        echo_json([{"name": e.name, "kind": e.kind, "plugin": e.plugin, "summary": e.summary} for e in entries])
        return
    print_table(["name", "kind", "plugin", "summary"], [[e.name, e.kind, e.plugin, e.summary] for e in entries])


# -- blocks ---------------------------------------------------------------------------------------------------
@cli.command("blocks")
@click.argument("name")
@click.option("--weights", default="none", show_default=True, help="pretrained, none or a local path.")
@click.option("--unfreeze", metavar="SPEC", help="Freeze report for: none, all, last:N, from:NAME, names.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def blocks_cmd(name: str, weights: str, unfreeze: str | None, as_json: bool) -> None:
    """Show a backbone's named blocks, earliest first, with parameter counts."""
    from tlkit.api import get_backbone

    bb = get_backbone(name, weights=weights)
    if unfreeze:
        from tlkit.commands.finetune import show_freeze_preview

        show_freeze_preview(bb, unfreeze, as_json)
        return
    rows = [[i, b.name, b.n_params(bb.module), len(b.params)] for i, b in enumerate(bb.blocks())]
    if as_json:
        echo_json([{"index": r[0], "name": r[1], "params": r[2], "tensors": r[3]} for r in rows])
        return
    total = sum(r[2] for r in rows)
    print_table(["#", "block", "params", "tensors"], rows, title=f"{name}: {len(rows)} blocks, {total:,} params")


def _attach_command_modules() -> None:
    import importlib

    from tlkit.commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(cli)


_attach_command_modules()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tlkit")
