"""The on-disk memos are trustworthy: a backbone description is read back only under the exact key it was computed
for (options, local files, libraries, code), a stale one is caught before rows are written under it, and name
indexes are built once per installed library. Real backbones (the test kit's fake CNN), real files."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import tlkit
from tlkit.errors import TlkitError
from tlkit.host import memo
from tlkit.host.describe import KIND, check_live, describe, memo_key
from tlkit.testing import FakeImageBackbone, make_image_folder

SPEC_CALLS = {"n": 0}


class MemoFake(FakeImageBackbone):
    """The fake CNN with memo inputs: its description depends on its options and a local weights file."""

    def memo_inputs(self) -> dict[str, list[str]] | None:
        return {"libraries": ["torch"], "paths": [self.weights] if self.weights_kind() == "local" else []}

    @property
    def spec(self) -> Any:
        SPEC_CALLS["n"] += 1
        return super().spec


@pytest.fixture(autouse=True)
def memo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "memo"
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(folder))
    return folder


def fresh(**options: Any) -> MemoFake:
    return MemoFake("memo/fake", **options)


def test_a_description_is_remembered_under_its_key(memo_dir: Path) -> None:
    first = describe(fresh(weights="none"))
    assert not first.memoised and list((memo_dir / KIND).glob("*.json"))
    calls = SPEC_CALLS["n"]
    again = describe(fresh(weights="none"))
    assert again.memoised and SPEC_CALLS["n"] == calls  # read back, the spec was not computed
    assert again.fingerprint == first.fingerprint == fresh(weights="none").fingerprint()
    assert again.spec == first.spec
    # Other options are another key.
    other = describe(fresh(weights="none", preprocess={"input_size": [3, 24, 24]}))
    assert not other.memoised and other.fingerprint != first.fingerprint


def test_a_changed_weights_file_is_a_new_key(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    module = fresh(weights="none").module
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    before = describe(fresh(weights=str(path)))
    assert describe(fresh(weights=str(path))).memoised
    state["stem.0.bias"] = state["stem.0.bias"] + 1
    save_file(state, str(path))  # new content (same size): the file's times and inode say it changed
    after = describe(fresh(weights=str(path)))
    assert not after.memoised
    assert after.fingerprint != before.fingerprint
    assert after.fingerprint == fresh(weights=str(path)).fingerprint()


def test_the_key_holds_library_code_and_options() -> None:
    key = memo_key(fresh(weights="none"))
    assert key is not None
    assert key["libraries"]["torch"].startswith(version("torch") + ":")
    assert __name__ in key["code"] and "tlkit.contract.backbone" in key["code"]
    assert key["options"]["weights"] == "none" and key["name"] == "memo/fake"
    assert memo_key(FakeImageBackbone("fake/image", weights="none")) is None  # no memo_inputs: never memoised


def test_a_stale_memo_is_caught_before_rows_are_written(memo_dir: Path, tmp_path: Path) -> None:
    bb = fresh(weights="none")
    key = memo_key(bb)
    assert key is not None
    truth = bb.fingerprint()
    memo.write_memo(KIND, key, {"spec": bb.spec.to_dict(), "fingerprint": "0" * 32})  # what a bad key would give
    stale = describe(fresh(weights="none"))
    assert stale.memoised and stale.fingerprint == "0" * 32
    with pytest.raises(TlkitError, match="does not match the model"):
        check_live(fresh(weights="none"), stale.fingerprint)
    assert describe(fresh(weights="none")).fingerprint == truth  # replaced
    # Through an extraction: the stale memo stops the run before a row is written under its key.
    memo.write_memo(KIND, key, {"spec": bb.spec.to_dict(), "fingerprint": "0" * 32})
    images = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    out = tmp_path / "c.h5"
    with pytest.raises(TlkitError, match="does not match the model"):
        tlkit.extract(fresh(weights="none"), images, out, workers=0)
    assert not out.exists()
    assert tlkit.extract(fresh(weights="none"), images, out, workers=0).n_items == 4  # the memo was replaced
    assert tlkit.extract(fresh(weights="none"), images, out, workers=0).status == "up-to-date"


def test_unreadable_memos_are_ignored_and_memos_can_be_off(memo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = memo_key(fresh(weights="none"))
    assert key is not None
    path = memo.memo_path(KIND, key)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert not describe(fresh(weights="none")).memoised
    doc = json.loads(path.read_text())  # rewritten whole
    assert doc["format"] == "tlkit-memo" and doc["key"] == json.loads(json.dumps(key))
    doc["key"]["name"] = "another"  # a file whose key is not this one's is not used
    path.write_text(json.dumps(doc))
    assert not describe(fresh(weights="none")).memoised
    monkeypatch.setenv("TLKIT_CACHE_DIR", "")
    assert memo.cache_dir() is None
    assert not describe(fresh(weights="none")).memoised and not describe(fresh(weights="none")).memoised


def test_a_library_index_is_built_once_per_installed_version(memo_dir: Path) -> None:
    calls = []

    def build() -> dict[str, Any]:
        calls.append(1)
        return {"names": ("a", "b")}

    assert memo.library_index("json", build) == {"names": ["a", "b"]}
    assert memo.library_index("json", build) == {"names": ["a", "b"]} and len(calls) == 1
    assert memo.library_index("json", build, schema=2) == {"names": ["a", "b"]} and len(calls) == 2
    assert memo.library_index("no_such_library_here", build) and len(calls) == 3  # not installed: not memoised
    stamp, st = memo.library_stamp("json"), os.stat(json.__file__)
    assert stamp is not None and stamp.split(":")[1:] == [str(st.st_size), str(st.st_mtime_ns)]
    assert memo.library_stamp("no_such_library_here") is None


def test_the_memo_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TLKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert memo.cache_dir() == tmp_path / "xdg" / "tlkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert memo.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "tlkit"
