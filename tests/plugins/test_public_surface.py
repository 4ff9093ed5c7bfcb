"""Plugins are written against the public surface: ``tlkit.plugin`` and ``tlkit.testing``, nothing else of tlkit.

Every module under ``plugins/`` (the built-in plugins and the example plugin) is parsed, and every import checked:

- of tlkit, only ``tlkit.plugin`` and ``tlkit.testing`` (a plugin's own tests may also use the user API, ``tlkit``);
- of another plugin, only public names (no ``_private`` module or name);
- and ``import tlkit.plugin`` itself stays free of torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parents[2] / "plugins"
ALLOWED = ("tlkit.plugin", "tlkit.testing")
#: Top-level packages of the plugins under plugins/ (built-ins and examples).
PACKAGES = {p.parent.name for p in PLUGINS.rglob("__init__.py") if "build" not in p.parts and p.parent.name != "tests"}


def modules() -> list[Path]:
    return sorted(p for p in PLUGINS.rglob("*.py") if "build" not in p.relative_to(PLUGINS).parts)


def imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """``(line, module, imported names)`` of every absolute import, including those inside functions."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return out


def problems(rel: Path, source: str) -> list[str]:
    """What is wrong with the imports of ``source``, the module at ``rel`` under ``plugins/``."""
    own = rel.parts[0] if rel.parts[0] != "examples" else (rel.parts[2] if len(rel.parts) > 2 else "")
    is_test = "tests" in rel.parts
    found = []
    for line, module, names in imports(ast.parse(source, str(rel))):
        top = module.split(".")[0]
        where = f"{rel}:{line}: {module}"
        if top == "tlkit":
            if module == "tlkit" and is_test and not names:
                continue  # `import tlkit`: the user API, in a plugin's own tests
            if module == "tlkit" and names and set(names) <= {"plugin", "testing"}:
                continue
            if not any(module == a or module.startswith(a + ".") for a in ALLOWED):
                found.append(f"{where} (use tlkit.plugin or tlkit.testing)")
        elif top in PACKAGES and top != own:
            private = [p for p in module.split(".") if p.startswith("_")] + [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{where} imports private {', '.join(private)} of another plugin")
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_plugin_imports_only_the_public_surface(path: Path) -> None:
    assert not problems(path.relative_to(PLUGINS), path.read_text())


def test_the_check_sees_every_plugin_and_catches_internal_imports() -> None:
    assert {"tlkit_timm", "tlkit_torchvision", "tlkit_hf", "tlkit_effnet_lite"} <= PACKAGES
    source = (
        "from tlkit.contract.backbone import Backbone\n"
        "from tlkit_hf.base import _quiet_progress\n"
        "import tlkit\n"
        "def f():\n    import tlkit.errors\n"
        "from tlkit_timm.naming import check_name\n"
        "from tlkit.plugin import hookimpl\n"
    )
    found = problems(Path("tlkit_timm/probe.py"), source)
    assert [f.split(":")[1] for f in found] == ["1", "2", "3", "5"]
    assert "_quiet_progress" in found[1]
    assert problems(Path("examples/tlkit-x/tests/test_x.py"), "import tlkit\nfrom tlkit import testing\n") == []


def test_import_tlkit_plugin_does_not_import_torch() -> None:
    code = "import sys, tlkit.plugin; print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_surface_names_what_it_exports() -> None:
    import tlkit.plugin

    assert sorted(tlkit.plugin.__all__) == sorted(set(tlkit.plugin.__all__))
    assert all(hasattr(tlkit.plugin, name) for name in tlkit.plugin.__all__)
    public = {n for n in vars(tlkit.plugin) if not n.startswith(("_", "@")) and n != "annotations"}
    assert public == set(tlkit.plugin.__all__)
