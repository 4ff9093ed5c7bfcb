"""The bad-input corpus (tests/corpus/make_corpus.py) through ``tlkit extract`` in a real subprocess.

For each case: exit 0, every good item a row (with its class), every bad item a named skip record with a reason,
ignored files never rows, and no traceback; a rerun is a no-op with the same rows and values. A case the rules make a
dataset-level error must stop with one ``Error:`` line naming the problem, and leave neither a cache nor a ``.work``.

The extraction runs in a subprocess because "no traceback" is about what a user sees on the terminal; the cheap fake
backbones (``fake/image``, ``fake/text`` and the corpus' own ``corpus/audio`` plugin) keep each run to the
interpreter's start-up time. Related kinds share a case (a folder holds many bad files), so that the whole corpus is
14 datasets, not one run per kind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _extract_helpers import CHILD_ENV
from corpus.make_corpus import BACKBONES, CASE_NAMES, Case, all_kinds, install_audio_plugin, make_case

OPTIONS = ["--precision", "fp32", "--workers", "0", "--quiet", "--json"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The corpus folder and the environment of the child processes (which can find the ``corpus/audio`` plugin)."""
    root = tmp_path_factory.mktemp("corpus")
    site = install_audio_plugin(root / "site")
    env = {**CHILD_ENV, "PYTHONPATH": os.pathsep.join(p for p in [str(site), os.environ.get("PYTHONPATH", "")] if p)}
    env.pop("TLKIT_PLUGINS", None)
    env.pop("TLKIT_DEBUG", None)
    return root, env


def _unprivileged() -> list[str]:
    """A command prefix under which mode bits apply: nothing for a normal user; for root, ``setpriv`` without the
    capabilities that let root read anything (the pytest.skip names why when that is impossible)."""
    if os.geteuid() != 0:
        return []
    drop = "-dac_override,-dac_read_search"
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", "--"] if setpriv else []
    with tempfile.TemporaryDirectory() as tmp:
        locked = Path(tmp) / "locked"
        locked.mkdir(mode=0)
        applies = bool(prefix) and subprocess.run([*prefix, "ls", str(locked)], capture_output=True).returncode != 0
        locked.chmod(0o700)
    if not applies:
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE: mode bits would not apply")
    return prefix


def _extract(case: Case, folder: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tlkit", "extract", BACKBONES[case.modality], str(folder / case.input)]
    prefix = _unprivileged() if case.needs_non_root else []
    return subprocess.run(
        [*prefix, *cmd, "-o", str(out), *OPTIONS, *case.options],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=300,
    )


def _read(out: Path) -> tuple[list[str], dict[str, str], dict[str, str], np.ndarray]:
    """Row ids, skip records (id -> reason), each row's class name, and the features, as tlkit's reader gives them."""
    from tlkit.cache import FeatureCache

    with FeatureCache(out) as fc:
        ids = list(fc.ids)
        names = fc.class_names
        classes = {i: (names[y] if y >= 0 else "") for i, y in zip(ids, fc.labels[()].tolist(), strict=True)}
        return ids, {s["id"]: s["reason"] for s in fc.skipped}, classes, np.asarray(fc.features[()])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_corpus_case(name: str, corpus: tuple[Path, dict[str, str]]) -> None:
    root, env = corpus
    case = make_case(name, root / "cases")
    folder, out = root / "cases" / name, root / f"{name}.h5"
    proc = _extract(case, folder, out, env)
    shown = proc.stdout + proc.stderr
    assert "Traceback" not in shown, shown[-4000:]

    if case.error is not None:
        errors = [line for line in shown.splitlines() if line.startswith("Error: ")]
        assert proc.returncode != 0 and len(errors) == 1, shown[-4000:]
        assert case.error in errors[0], f"expected {case.error!r} in the error: {errors[0]}"
        leftovers = [p.name for p in root.iterdir() if p.name in (out.name, f"{out.name}.work")]
        assert not leftovers, f"a run refused at the start left {leftovers}"
        return

    assert proc.returncode == 0, shown[-4000:]
    ids, skipped, classes, features = _read(out)
    problems = [
        f"good item is not a row: {i!r}" + (f" (skipped: {skipped[i]})" if i in skipped else "")
        for i in case.rows
        if i not in ids
    ]
    problems += [f"unexpected row: {i!r}" for i in ids if i not in case.rows]
    problems += [f"bad item has no skip record: {i!r}" for i in case.skipped if i not in skipped]
    problems += [
        f"skip record of {i!r} does not say {want!r}: {skipped[i]!r}"
        for i, want in case.skipped.items()
        if i in skipped and want.lower() not in skipped[i].lower()
    ]
    problems += [f"skip record without a reason: {i!r}" for i, why in skipped.items() if not why.strip()]
    problems += [
        f"unexpected skip record: {i!r}: {why}"
        for i, why in skipped.items()
        if i not in case.skipped and i not in case.ignored and i not in case.rows
    ]
    problems += [
        f"row {i!r} has class {classes.get(i)!r}, expected {want!r}"
        for i, want in case.labels.items()
        if i in classes and classes[i] != want
    ]
    assert not problems, "\n".join(problems)
    assert np.isfinite(features).all()

    again = _extract(case, folder, out, env)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-4000:]
    assert json.loads(again.stdout)["status"] == "up-to-date", again.stdout
    ids2, skipped2, _, features2 = _read(out)
    assert (ids2, skipped2) == (ids, skipped)
    assert np.array_equal(features2, features)


def test_corpus_covers_60_kinds(tmp_path: Path) -> None:
    cases = [make_case(name, tmp_path) for name in CASE_NAMES]
    kinds = all_kinds(cases)
    assert len(kinds) >= 60, kinds
    assert {k.split(":")[0] for k in kinds} == {"image", "text", "audio"}
    assert all(c.rows or c.skipped or c.error for c in cases)
