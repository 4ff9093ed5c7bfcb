"""Shared test setup and fixtures: no hub access (the network here reaches only package registries), fresh plugin
state, single-threaded torch, and the real data the tests run on (Fashion-MNIST, photos; made by ``_data.py``)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if "TLKIT_CACHE_DIR" not in os.environ:
    # tlkit's on-disk memos (name indexes, backbone descriptions) go to a folder of this session, not the user's
    # ~/.cache/tlkit; subprocesses inherit it. A test that needs an empty one sets TLKIT_CACHE_DIR itself.
    os.environ["TLKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="tlkit-test-memo-")
    atexit.register(shutil.rmtree, os.environ["TLKIT_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def fresh_plugins():
    """Rediscover plugins before and after the test (for tests that change TLKIT_PLUGINS or register plugins)."""
    from tlkit.host import manager as plugins

    plugins.reset()
    yield plugins
    plugins.reset()


@pytest.fixture(scope="module")
def one_thread():
    """torch single-threaded for a test module (restored after): shared cores make OpenMP threads of tests fight,
    and one thread keeps reductions in one order. Use ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from _extract_helpers import one_thread as single_thread

    with single_thread():
        yield


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """Debian's Fashion-MNIST folder; the test is skipped (named) when the package is not installed."""
    from _data import FASHION_MNIST

    if not FASHION_MNIST.is_dir():
        pytest.skip("needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST


@pytest.fixture
def fashion_mnist(fashion_mnist_dir):
    """``fashion_mnist(split, n) -> (images uint8 [n, 28, 28], labels)`` for ``train`` or ``t10k``."""
    from _data import fashion_mnist as load

    return load


@pytest.fixture
def fashion_mnist_folder(fashion_mnist_dir):
    """``fashion_mnist_folder(root, split, per_class, seed=0) -> root``: a seeded sample as PNG class folders."""
    from _data import fashion_mnist_folder as write

    return write


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder of real photos (JPEG, PNG, WebP; varied sizes and aspect ratios), written once per session."""
    from _data import write_photos

    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder
