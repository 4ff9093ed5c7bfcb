"""Write docs/cli.md from the Click command tree, so the CLI reference cannot drift from the code.

python scripts/gen_cli_docs.py          # rewrite docs/cli.md
python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale (the test suite runs this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

OUT = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

HEADER = """# CLI reference

Generated from the commands themselves by `python scripts/gen_cli_docs.py`; a test fails when this page is stale.
Every command prints a one-line `Error: ...` and exits with 1 for bad input, and exits with 2 for usage errors.
Plugins can add commands (`tlkit_register_commands`); they are not listed here.
"""


def _walk(cmd: click.Command, path: list[str], ctx: click.Context | None) -> list[str]:
    ctx = click.Context(cmd, info_name=path[-1], parent=ctx, max_content_width=110, terminal_width=110)
    title = " ".join(path)
    parts = [f"\n## `{title}`\n", "```text", cmd.get_help(ctx).rstrip(), "```"]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False) and _is_ours(sub):
                parts += _walk(sub, [*path, name], ctx)
    return parts


def _is_ours(cmd: click.Command) -> bool:
    module = getattr(cmd.callback, "__module__", "") or ""
    return module.startswith("tlkit")


def render() -> str:
    import os

    os.environ["TLKIT_PLUGINS"] = ""  # built-ins only: third-party commands do not belong in tlkit's reference
    from tlkit.cli import cli

    return HEADER + "\n".join(_walk(cli, ["tlkit"], None)) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
