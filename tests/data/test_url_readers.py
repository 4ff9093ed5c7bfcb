"""The folder and manifest readers at fsspec URLs: ``file://`` (the local path itself), ``memory://`` folders and
manifests, manifests whose paths are URLs, and ``http://127.0.0.1`` from a local server (a served manifest; a folder
the server does not list is a one-line error). Each extraction gives the same rows as the local folder."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading

import fsspec
import numpy as np
import pytest
from _extract_helpers import assert_same_cache, read_cache, run_cli
from _stream_helpers import _RangeHandler, http_server, write_folder

import tlkit
from tlkit.errors import BadInputError
from tlkit.host.readers import get_reader, open_dataset

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]
API = {"precision": "fp32", "workers": 0, "batch_size": 4}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("urls") / "imgs", 10)


@pytest.fixture(scope="module")
def local_cache(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("urls-local") / "local.h5"
    tlkit.extract("fake/image", folder, out, **API)
    return out


@pytest.fixture
def memory_folder(folder):
    fs = fsspec.filesystem("memory")
    for p in sorted(folder.rglob("*.png")):
        fs.pipe(f"/imgs/{p.relative_to(folder).as_posix()}", p.read_bytes())
    fs.pipe("/imgs/.hidden/0.png", b"not listed")
    yield "memory://imgs"
    fs.rm("/imgs", recursive=True)


def rows_by_id(path):
    cache = read_cache(path)
    return dict(zip(cache["ids"], cache["features"], strict=True)), cache


def test_file_url_is_the_local_folder(folder, local_cache, tmp_path):
    listed = open_dataset(f"file://{folder}", "image")
    assert listed.records == open_dataset(folder, "image").records  # same ids, paths and stamps
    out = tmp_path / "file.h5"
    tlkit.extract("fake/image", f"file://{folder}", out, **API)
    assert_same_cache(out, local_cache)


def test_memory_folder_lists_classes_and_extracts_the_same_rows(memory_folder, local_cache, tmp_path):
    listed = open_dataset(memory_folder, "image")
    assert listed.reader == "image" and listed.class_names == ["0", "1"]
    assert [r.id for r in listed.records] == read_cache(local_cache)["ids"]  # hidden folder left out
    assert listed.records[0].source == "memory://imgs/0/000000.png" and listed.records[0].stamp.startswith("852")
    out = tmp_path / "memory.h5"
    tlkit.extract("fake/image", memory_folder, out, **API)
    assert_same_cache(out, local_cache)


def test_manifests_with_url_paths_and_at_urls(folder, memory_folder, local_cache, tmp_path):
    ids = read_cache(local_cache)["ids"]
    body = "path,label\n" + "".join(f"{i},{i.split('/')[0]}\n" for i in ids)
    fs = fsspec.filesystem("memory")
    fs.pipe("/imgs/manifest.csv", body.encode())  # relative paths, relative to the manifest's URL
    at_url = tmp_path / "at-url.h5"
    tlkit.extract("fake/image", "memory://imgs/manifest.csv", at_url, **API)
    local_manifest = tmp_path / "urls.csv"  # a local manifest whose paths are URLs
    local_manifest.write_text("path,label\n" + "".join(f"{memory_folder}/{i},{i[0]}\n" for i in ids))
    of_urls = tmp_path / "of-urls.h5"
    tlkit.extract("fake/image", local_manifest, of_urls, **API)
    want, _ = rows_by_id(local_cache)
    for out, prefix in ((at_url, ""), (of_urls, f"{memory_folder}/")):
        got, cache = rows_by_id(out)
        assert list(got) == [prefix + i for i in ids] and cache["class_names"] == ["0", "1"]
        assert all(np.array_equal(got[prefix + i], want[i]) for i in ids)


def test_missing_file_in_a_url_manifest_is_a_named_skip(memory_folder, tmp_path):
    fsspec.filesystem("memory").pipe("/imgs/gaps.csv", b"path,label\n0/000000.png,0\n0/gone.png,0\n1/000001.png,1\n")
    out = tmp_path / "gaps.h5"
    result = tlkit.extract("fake/image", "memory://imgs/gaps.csv", out, **API)
    assert result.n_items == 2 and [(s.id, s.reason) for s in result.skipped_now] == [("0/gone.png", "file not found")]


class _NoListing(_RangeHandler):
    """A static server that serves files but no folder listings (as object stores answer a folder URL)."""

    def list_directory(self, path):  # type: ignore[no-untyped-def]
        self.send_error(404, "no listing")
        return None


@contextlib.contextmanager
def unlisted_server(root):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_NoListing, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_http_manifest_reads_and_unlisted_folder_is_a_clear_error(folder, local_cache, tmp_path):
    root = folder.parent
    ids = read_cache(local_cache)["ids"]
    (root / "served.csv").write_text("path,label\n" + "".join(f"imgs/{i},{i[0]}\n" for i in ids))
    with unlisted_server(root) as base:
        listed = open_dataset(base + "served.csv", "image")
        assert listed.records[0].source == base + "imgs/0/000000.png"
        assert listed.records[0].stamp.startswith("852:")  # size and Last-Modified from the server
        assert get_reader(listed).load(listed.records[0]).size == (16, 16)
        out = tmp_path / "http.h5"
        tlkit.extract("fake/image", base + "served.csv", out, **API)
        with pytest.raises(BadInputError, match="cannot list this URL .* give a manifest .csv"):
            open_dataset(base + "imgs/", "image")
        proc = run_cli("extract", "fake/image", base + "imgs/", "-o", tmp_path / "no.h5", "--workers", "0", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "cannot list" in proc.stderr
    assert not (tmp_path / "no.h5").exists()
    got, _ = rows_by_id(out)
    want, _ = rows_by_id(local_cache)
    assert all(np.array_equal(got[f"imgs/{i}"], want[i]) for i in ids)


def test_http_folder_with_an_index_page_is_listed(folder, local_cache, tmp_path):
    with http_server(folder.parent) as base:  # SimpleHTTPRequestHandler serves HTML folder listings
        listed = open_dataset(base + "imgs/", "image")
        assert [r.id for r in listed.records] == read_cache(local_cache)["ids"]
        out = tmp_path / "http-folder.h5"
        tlkit.extract("fake/image", base + "imgs/", out, **API)
    assert_same_cache(out, local_cache)


def test_a_file_url_that_is_not_a_folder_or_manifest(tmp_path):
    fsspec.filesystem("memory").pipe("/lonely.png", b"x")
    with pytest.raises(BadInputError, match="a file, not a folder"):
        open_dataset("memory://lonely.png", "image")
    with pytest.raises(BadInputError, match="cannot list this URL"):
        open_dataset("memory://nothing-here", "image")
