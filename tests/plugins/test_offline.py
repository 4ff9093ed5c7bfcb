"""Offline, a hub name fails at once in one line that names ``--weights none`` and the local-directory form, instead
of a minute of "Retrying in Ns"; weights already in the local cache still load. Through the CLI in subprocesses.

The network is the one thing mocked, and only by pointing ``HF_ENDPOINT`` at a local port where nothing listens;
the machine's own offline state (no route to huggingface.co) is used when it has one. Each subprocess gets an
empty Hugging Face cache (``HF_HOME``) of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tlkit.host import network
from tlkit.testing import make_image_folder

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def closed_port() -> int:
    """A local port where nothing listens (connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS and k != "HF_ENDPOINT"}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    env.update(extra)
    return env


def tlkit(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Retrying" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return errors[0]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data" / "imgs", classes=2, per_class=2)


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "texts.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\na good film,pos\na bad film,neg\nsplendid,pos\ndreadful,neg\n", encoding="utf-8")
    return path


# -- the probe ----------------------------------------------------------------------------------------------------
def test_offline_reason_answers_from_the_variables_and_a_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*OFFLINE_VARS, "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(network, "_cache_only_because", None)
    network.reset()
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    reason = network.offline_reason()
    assert reason is not None and "127.0.0.1 is unreachable" in reason
    with socket.socket() as server:  # something listens: reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert network.offline_reason() is None
        assert network.offline_reason(f"http://127.0.0.1:{port}/weights.pth") is not None  # another host is asked
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert network.offline_reason() == "HF_HUB_OFFLINE=1 is set"
        assert network.offline_reason(f"http://localhost:{server.getsockname()[1]}/x.pth") is None  # not the hub
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert network.offline_reason() is None  # behind a proxy a direct connect tells nothing: the download decides
    network.reset()


# -- through the CLI ----------------------------------------------------------------------------------------------
def test_a_timm_hub_name_fails_at_once_without_a_network(tmp_path: Path, images: Path) -> None:
    env = child_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    error = one_line_error(tlkit(env, "extract", "timm/resnet18", images, "-o", tmp_path / "out.h5"))
    assert "timm/resnet18" in error and "127.0.0.1 is unreachable" in error
    assert "--weights none" in error and "local model directory" in error
    assert not list(tmp_path.glob("out.h5*")) and not list(tmp_path.glob(".out.h5*"))  # nothing blocks a rerun
    # The corrected command works offline.
    assert tlkit(env, "extract", "timm/resnet18", images, "-o", tmp_path / "out.h5", "--weights", "none",
                 "--input-size", "64", "--workers", "0").returncode == 0  # fmt: skip


def test_a_hub_text_model_fails_at_once_with_hf_hub_offline(tmp_path: Path, texts: Path) -> None:
    env = child_env(tmp_path, HF_HUB_OFFLINE="1")
    out = tlkit(env, "extract", "hf/sentence-transformers/all-MiniLM-L6-v2", texts, "-o", tmp_path / "t.h5")
    error = one_line_error(out)
    assert "HF_HUB_OFFLINE=1 is set" in error and "not in the local Hugging Face cache" in error
    assert "--weights none" in error and "hf/<dir>" in error
    assert not list(tmp_path.glob("t.h5*"))


def test_this_machine_offline(tmp_path: Path, images: Path, texts: Path) -> None:
    """The real thing, where the machine has no route to the hub (a named skip where it has one)."""
    env = child_env(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", "from tlkit.host.network import offline_reason as r; print(r() or '')"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    if not probe.stdout.strip():
        pytest.skip("huggingface.co is reachable from here: not an offline machine")
    assert "Retrying" not in one_line_error(tlkit(env, "extract", "timm/resnet18", images, "-o", tmp_path / "a.h5"))
    name = "hf/sentence-transformers/all-MiniLM-L6-v2"
    error = one_line_error(tlkit(env, "extract", name, texts, "-o", tmp_path / "b.h5"))
    assert "huggingface.co" in error and "--weights none" in error


@pytest.mark.slow
def test_weights_in_the_local_cache_load_offline(tmp_path: Path, images: Path) -> None:
    """The hub's own code path, offline: timm reads the weights from the Hugging Face cache without a network."""
    import timm
    from safetensors.torch import save_file

    commit = "0" * 40
    repo = tmp_path / "hf-home" / "hub" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    env = child_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    out = tlkit(env, "extract", "timm/resnet18", images, "-o", tmp_path / "out.h5", "--input-size", "64",
                "--workers", "0")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Retrying" not in out.stderr
