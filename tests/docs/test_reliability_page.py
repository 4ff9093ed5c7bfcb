"""docs/reliability.md cannot rot: every test it cites exists, and every promise in its tables cites one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reliability.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_cited_test_exists() -> None:
    refs = REFERENCE.findall(PAGE.read_text(encoding="utf-8"))
    assert len(refs) >= 30, refs
    missing = [f"{file}::{name}" for file, name in refs if not (ROOT / file).is_file()]
    missing += [
        f"{file}::{name}"
        for file, name in refs
        if (ROOT / file).is_file() and (not name.startswith("test_") or name not in _defined_tests(ROOT / file))
    ]
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"


def test_every_promise_cites_a_test() -> None:
    rows = [line for line in PAGE.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    promises = [row for row in rows if row != "| promise | checked by |"]
    assert len(promises) >= 20
    uncited = [row for row in promises if not REFERENCE.search(row.rsplit("|", 2)[-2])]
    assert not uncited, "rows of docs/reliability.md without a test in their last column:\n" + "\n".join(uncited)
