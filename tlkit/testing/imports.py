"""Which heavy libraries a CLI command imports: the probe that start-up tests and ``benchmarks/startup.py`` run.

``python -c IMPORT_PROBE ARGS...`` runs ``tlkit ARGS...`` in that process and then writes one last line,
``IMPORTED=lib,lib`` (the :data:`HEAVY_LIBRARIES` in ``sys.modules``, sorted), to stderr; its exit code is the
command's. :func:`imported_libraries` reads that line back.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

#: The libraries whose import dominates a command's start-up.
HEAVY_LIBRARIES = ("timm", "torch", "torchvision", "transformers")

IMPORT_PROBE = f"""
import sys
from tlkit.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="tlkit")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in {HEAVY_LIBRARIES!r} if m in sys.modules)
print("IMPORTED=" + ",".join(heavy), file=sys.stderr)
sys.exit(code if isinstance(code, int) else 1)
"""


def imported_libraries(stderr: str) -> set[str] | None:
    """The libraries the probe's last ``IMPORTED=`` line names, or ``None`` when the probe wrote none."""
    marker = [line for line in stderr.splitlines() if line.startswith("IMPORTED=")]
    if not marker:
        return None
    return set(filter(None, marker[-1].removeprefix("IMPORTED=").split(",")))


def probe_cli(
    args: list[str], env: Mapping[str, str] | None = None, timeout: float | None = 600, *, flags: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], set[str] | None]:
    """``tlkit ARGS`` in a fresh Python (``flags`` before ``-c``, e.g. ``("-X", "importtime")``): the finished
    process and the heavy libraries it imported (``None`` when it died before saying)."""
    proc = subprocess.run(
        [sys.executable, *flags, "-c", IMPORT_PROBE, *args],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout,
    )
    return proc, imported_libraries(proc.stderr)


__all__ = ["HEAVY_LIBRARIES", "IMPORT_PROBE", "imported_libraries", "probe_cli"]
