"""``tlkit finetune`` with published weights that cannot be had fails at once in one line, as ``tlkit extract`` does
(:meth:`tlkit.plugin.Backbone.check_weights_available`): before torch or the model library is imported, before any
data is read, and leaving no run folder behind. Through the CLI in a subprocess; the network is mocked only by
pointing ``HF_ENDPOINT`` at a local port where nothing listens, with an empty Hugging Face cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tlkit.testing import make_image_folder
from tlkit.testing.imports import probe_cli

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_finetune_with_unreachable_weights_fails_at_once(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf-home"))
    # The name index is built once per installed timm (importing it), as after a first `tlkit backbones`.
    listed = subprocess.run([sys.executable, "-m", "tlkit", "backbones", "--filter", "timm/resnet18"],
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert listed.returncode == 0 and "timm/resnet18" in listed.stdout, listed.stderr
    run = tmp_path / "run"
    out, imported = probe_cli(["finetune", "timm/resnet18", str(images), "-o", str(run)], env)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if not line.startswith("IMPORTED=")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    assert "timm/resnet18" in lines[0] and "127.0.0.1 is unreachable" in lines[0] and "--weights none" in lines[0]
    assert "Retrying" not in out.stderr and "Traceback" not in out.stderr
    assert imported is not None and not imported & {"torch", "timm"}, "the check ran after torch or timm was imported"
    assert not run.exists()
