"""``tlkit extract --compile``: the backbone's ``embed`` through ``torch.compile`` (inductor, a real compilation with
the machine's C++ compiler). It must give the eager features, compile once for the whole run (smaller batches are
padded), say that it ran compiled, fall back to eager with a warning when compiling fails, and be refused where
batches change shape."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from _extract_helpers import FP32, run_cli, write_images, write_texts

import tlkit
from tlkit.cache import FeatureCache
from tlkit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
COMMON = {"precision": "fp32", "batch_size": 16, "workers": 0}


def _features(path: Path) -> tuple[list[str], np.ndarray, dict[str, object]]:
    with FeatureCache(path) as fc:
        return list(fc.ids), fc.features[()], dict(fc.meta["extraction"])


def test_compiled_extraction_gives_the_eager_features_and_compiles_once(tmp_path: Path) -> None:
    import torch._dynamo

    images = write_images(tmp_path / "imgs", classes=2, per_class=20)  # 40 items: batches of 16, 16 and 8
    eager = tlkit.extract("fake/image", images, tmp_path / "eager.h5", **COMMON)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):  # the batch of 8 is padded, not compiled again
        compiled = tlkit.extract("fake/image", images, tmp_path / "compiled.h5", compile=True, **COMMON)
    assert compiled.compiled and compiled.compile_seconds > 0 and not eager.compiled
    assert "compiled in" in compiled.summary() and "compiled in" not in eager.summary()
    ids_a, x_a, meta_a = _features(tmp_path / "eager.h5")
    ids_b, x_b, meta_b = _features(tmp_path / "compiled.h5")
    assert ids_a == ids_b and len(ids_b) == 40 and np.allclose(x_a, x_b, atol=1e-5)
    assert meta_b["compiled"] is True and meta_a["compiled"] is False
    # Compiling is speed only, not part of the key: the eager cache is up to date for a compiled rerun.
    again = tlkit.extract("fake/image", images, tmp_path / "eager.h5", compile=True, **COMMON)
    assert again.status == "up-to-date"
    torch._dynamo.reset()


def test_a_failed_compilation_runs_eager_with_one_warning(tmp_path: Path) -> None:
    """No usable C++ compiler (a path that does not exist): the run warns once and extracts eagerly."""
    import torch._dynamo
    import torch._inductor.config as inductor

    images = write_images(tmp_path / "imgs", classes=2, per_class=10)
    torch._dynamo.reset()
    with inductor.patch({"cpp.cxx": (str(tmp_path / "no-such-compiler"),)}), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        result = tlkit.extract("fake/image", images, tmp_path / "c.h5", compile=True, **COMMON)
    torch._dynamo.reset()
    said = [str(x.message) for x in w if "torch.compile failed" in str(x.message)]
    assert not result.compiled and result.n_computed == 20 and len(said) == 1
    assert "extracting without it" in said[0]
    ids, x, meta = _features(tmp_path / "c.h5")
    assert len(ids) == 20 and np.isfinite(x).all() and meta["compiled"] is False


def test_compile_is_refused_where_batches_change_shape(tmp_path: Path) -> None:
    texts = write_texts(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="compile is for image backbones; fake/text is a text backbone"):
        tlkit.extract("fake/text", texts, tmp_path / "t.h5", compile=True, **COMMON)
    images = write_images(tmp_path / "imgs", classes=2, per_class=4)
    with pytest.raises(ConfigError, match="compile cannot be combined with layers"):
        tlkit.extract("fake/image", images, tmp_path / "i.h5", compile=True, layers="all", **COMMON)
    done = run_cli("extract", "fake/text", texts, "-o", tmp_path / "t.h5", "--compile", *FP32, check=False)
    assert done.returncode != 0 and "--compile is for image backbones" in done.stderr
    assert not (tmp_path / "t.h5").exists()
