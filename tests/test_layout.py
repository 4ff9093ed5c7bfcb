"""The layout keeps its promises: imports point down (no cycles), only ``tlkit/runtime`` probes devices, modules stay
small, and every stage package names its public surface. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tlkit"
MAX_LINES = 600
#: Calls and names that ask the machine which devices or instruction sets exist.
PROBES = (
    "torch.cuda.is_available",
    "torch.cuda.device_count",
    "torch.cuda.is_bf16_supported",
    "torch.backends.mps",
    "os.cpu_count",
    "os.sched_getaffinity",
    "/proc/cpuinfo",
)


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(ROOT).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """Every tlkit module a file imports at run time (inside functions too; ``if TYPE_CHECKING:`` blocks excluded)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    Visitor().visit(tree)
    out = set()
    for name in found:
        parts = name.split(".")
        # importing tlkit.a.b runs tlkit.a's __init__ as well
        out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in known)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = sources()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        deps = imported_modules(ast.parse(path.read_text()), known)
        # a package's own __init__ is not a dependency of its submodules in a cycle sense when the submodule is the
        # one being imported by that __init__; real cycles between sibling modules still show
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


#: The stages in data-flow order. A module may import from its own package and from packages listed before it, never
#: from one listed after it, so the tree reads top-down and a newcomer meets each concern after what it builds on.
LAYERS = [
    ["errors", "canonical", "fileio"],
    ["data"],
    ["contract"],
    ["runtime"],
    ["host"],
    ["cache"],
    ["extraction"],
    ["runs"],
    ["heads"],
    ["finetuning"],
    ["inference"],
    ["plugin", "testing", "builtin", "sklearn", "demo"],
    ["cli"],
    ["tlkit", "__main__"],
]


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_imports_point_down_the_stages() -> None:
    upward = [f"{m} -> {d}" for m, deps in import_graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == []


def test_every_package_has_a_layer() -> None:
    for name in sources():
        layer_of(name)  # StopIteration names a package missing from LAYERS


def test_cycle_check_can_fail() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_only_runtime_probes_devices() -> None:
    offenders = []
    for name, path in sources().items():
        if name == "tlkit.runtime" or name.startswith("tlkit.runtime."):
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {probe}" for probe in PROBES if probe in text]
    assert offenders == [], "device probes belong in tlkit/runtime (resolve once, pass a Runtime down)"


@pytest.mark.parametrize("name", sorted(sources()))
def test_module_size(name: str) -> None:
    path = sources()[name]
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines; split it along the concern it serves"


def test_stage_packages_name_their_surface() -> None:
    missing = []
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        if init.parent.name == "demo":
            continue
        tree = ast.parse(init.read_text())
        names = {
            t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
        }
        if "__all__" not in names:
            missing.append(str(init.relative_to(ROOT)))
    assert missing == []


def public_names(init: Path) -> list[str]:
    """A package's ``__all__`` (imported: ``tlkit/__init__`` builds its list from the lazy map)."""
    import importlib

    return list(getattr(importlib.import_module(module_name(init)), "__all__", []))


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_no_submodule_shadows_a_public_name(init: Path) -> None:
    """``import tlkit.x.name`` must not replace the function ``tlkit.x.name`` (as ``tlkit.extract`` once did)."""
    package = init.parent
    shadowed = [
        n for n in public_names(init) if (package / f"{n}.py").exists() or (package / n / "__init__.py").exists()
    ]
    assert shadowed == []
