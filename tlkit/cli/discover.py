"""Discovery commands: ``tlkit plugins``, ``backbones`` (and ``backbones info``), ``heads`` and ``blocks``."""

from __future__ import annotations

from typing import Any

import click

from tlkit.cli.group import TlkitGroup, echo_json, print_table


# -- plugins --------------------------------------------------------------------------------------------------
@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_cmd(as_json: bool) -> None:
    """List discovered plugins: name, version, hooks and status (ok, broken, conflict, disabled) with the reason."""
    from tlkit.host.api import list_plugins

    infos = list_plugins()
    if as_json:
        echo_json([i.to_dict() for i in infos])
        return
    rows = [[i.name, i.dist, i.version, i.status, ", ".join(h.removeprefix("tlkit_") for h in i.hooks)] for i in infos]
    print_table(["plugin", "distribution", "version", "status", "hooks"], rows)
    _echo_reasons([(f"{i.name} ({i.status})", e) for i in infos for e in i.errors])


def _echo_reasons(reasons: list[tuple[str, str]]) -> None:
    """Below a table: why each broken plugin or name is broken, one line each (a table cell would wrap it)."""
    for what, reason in reasons:
        click.echo(f"{what}: {reason}")


# -- backbones ------------------------------------------------------------------------------------------------
@click.group("backbones", cls=TlkitGroup, invoke_without_command=True)
@click.option("--modality", type=click.Choice(["image", "text", "audio"]), help="Only this modality.")
@click.option("--filter", "pattern", metavar="GLOB", help="Glob on the name, e.g. 'timm/convnext*'.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def backbones_cmd(ctx: click.Context, modality: str | None, pattern: str | None, as_json: bool) -> None:
    """List backbones. Open-ended families (any timm model, any HF id) are listed through --filter.

    A name that cannot be used (its plugin failed, or two plugins register it) is listed as broken, with the reason.
    """
    if ctx.invoked_subcommand is not None:
        return
    from tlkit.host.registry import broken_names, list_backbones

    entries = list_backbones(pattern, modality)
    broken = broken_names("backbone", pattern, modality)
    if as_json:
        echo_json(
            [
                {"name": e.name, "modality": e.modality, "plugin": e.plugin, "summary": e.summary, "status": "ok"}
                for e in entries
            ]
            + [_broken_row(b) | {"modality": b.modality} for b in broken]
        )
        return
    if not entries and not broken:
        raise click.ClickException(f"no backbones match {pattern!r}" if pattern else "no backbones installed")
    rows = [[e.name, e.modality, e.plugin, e.summary] for e in entries]
    rows += [[b.name, b.modality or "?", ", ".join(b.plugins), "BROKEN (see below)"] for b in broken]
    print_table(["name", "modality", "plugin", "summary"], sorted(rows))
    _echo_reasons([(b.name, b.reason) for b in broken])


def _broken_row(b: Any) -> dict[str, Any]:
    """A name that cannot be used, for --json: ``status`` is ``broken`` and ``error`` says why."""
    return {"name": b.name, "plugin": ", ".join(b.plugins), "summary": "", "status": "broken", "error": b.reason}


@backbones_cmd.command("info")
@click.argument("name")
@click.option(
    "--weights",
    default="pretrained",
    show_default=True,
    help="Describe it with these weights: pretrained (what the name loads, as extract uses it), none or a local "
    "path. Nothing is downloaded: blocks are counted on the architecture alone.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backbones_info_cmd(name: str, weights: str, as_json: bool) -> None:
    """Show a backbone's spec, fingerprint and blocks.

    The spec: modality, embedding size, preprocessing, pooling, weights. The fingerprint is the one `tlkit extract`
    records with the same weights. The description is remembered on disk (keyed by the installed libraries and
    local files), so asking again is fast and imports no model library."""
    from tlkit.host.api import get_backbone
    from tlkit.host.describe import describe

    described = describe(get_backbone(name, weights=weights), blocks=True)
    spec = described.spec.to_dict()
    blocks: list[dict[str, Any]] = [{"name": b.name, "params": b.params} for b in described.blocks or ()]
    info = {**spec, "fingerprint": described.fingerprint, "blocks": blocks}
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
@click.command("heads")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def heads_cmd(as_json: bool) -> None:
    """List head types (a head whose plugin failed, or that two plugins register, is listed as broken)."""
    from tlkit.host.api import list_heads
    from tlkit.host.registry import broken_names

    entries = list_heads()
    broken = broken_names("head")
    if as_json:
        echo_json(
            [
                {"name": e.name, "kind": e.kind, "plugin": e.plugin, "summary": e.summary, "status": "ok"}
                for e in entries
            ]
            + [_broken_row(b) | {"kind": "?"} for b in broken]
        )
        return
    rows = [[e.name, e.kind, e.plugin, e.summary] for e in entries]
    rows += [[b.name, "?", ", ".join(b.plugins), "BROKEN (see below)"] for b in broken]
    print_table(["name", "kind", "plugin", "summary"], sorted(rows))
    _echo_reasons([(b.name, b.reason) for b in broken])


# -- blocks ---------------------------------------------------------------------------------------------------
@click.command("blocks")
@click.argument("name")
@click.option("--weights", default="none", show_default=True, help="pretrained, none or a local path.")
@click.option("--unfreeze", metavar="SPEC", help="Freeze report for: none, all, last:N, from:NAME, names.")
@click.option("--adapter", metavar="SPEC", help="With adapters (lora:r=8,…): adapter parameters per block.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def blocks_cmd(name: str, weights: str, unfreeze: str | None, adapter: str | None, as_json: bool) -> None:
    """Show a backbone's named blocks, earliest first, with parameter counts.

    Remembered on disk with the backbone's description (as `tlkit backbones info`), so asking again imports no model
    library."""
    from tlkit.host.api import get_backbone
    from tlkit.host.describe import describe_blocks

    bb = get_backbone(name, weights=weights)
    if unfreeze or adapter:
        from tlkit.cli.finetune import show_freeze_preview

        show_freeze_preview(bb, unfreeze or "all", as_json, adapter=adapter)
        return
    # From the description memo when it holds the backbone (no model library imported); a block whose output never
    # reaches the embedding is not offered.
    blocks = [b for b in describe_blocks(bb) if b.reaches_output]
    rows: list[list[Any]] = [[i, b.name, b.params, b.tensors] for i, b in enumerate(blocks)]
    if as_json:
        echo_json([{"index": r[0], "name": r[1], "params": r[2], "tensors": r[3]} for r in rows])
        return
    total = sum(r[2] for r in rows)
    print_table(["#", "block", "params", "tensors"], rows, title=f"{name}: {len(rows)} blocks, {total:,} params")


def register(cli: click.Group) -> None:
    for command in (plugins_cmd, backbones_cmd, heads_cmd, blocks_cmd):
        cli.add_command(command)
