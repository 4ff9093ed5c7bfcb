"""docs/large-datasets.md's Python blocks run as written (the shell recipes need a cluster or a URL, and are not
run; their pieces are tested in test_webdataset.py, including torchrun over http://127.0.0.1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "large-datasets.md"


@pytest.mark.slow
def test_python_blocks_run(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("datasets")
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert blocks
    for block in blocks:
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})  # fmt: skip
        assert out.returncode == 0, f"block failed:\n{block}\n{out.stderr[-3000:]}"
        assert "created" in out.stdout
