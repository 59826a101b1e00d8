"""Download, resume and verification of release files, against a local HTTP server on 127.0.0.1."""
import hashlib
import http.server
import pathlib
import threading

import pytest
import torch

from gpt1f import Config, init_params
from gpt1f.download import (DEFAULT_BASE_URL, RELEASE_SHA1, WEIGHT_NAMES, ChecksumError, DownloadError, fetch,
                            git_blob_sha1, resolve_base_url, weights_dir)
from gpt1f.openai_release import load_openai, save_openai
from gpt1f.release_data import path as packaged_file


def blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.modes[name]`` picks a misbehaviour:
    'drop' (first request sends half the body, then closes), 'wrong' (flips bytes),
    'norange' (ignores Range headers). Every request's (path, Range) lands in ``server.log``."""

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        self.server.log.append((name, rng))
        if name not in self.server.files:
            self.send_error(404)
            return
        body = self.server.files[name]
        mode = self.server.modes.get(name, "ok")
        if mode == "wrong":
            body = bytes(b ^ 0xFF for b in body)
        start = int(rng[len("bytes="):].rstrip("-")) if rng and mode != "norange" else 0
        if start >= len(body) and start:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode == "drop" and not self.server.dropped.get(name):
            self.server.dropped[name] = True
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


def local_server(handler, **state):
    """A threaded HTTP server on 127.0.0.1 serving ``handler`` in the background, with ``state``
    set on it and ``url`` its ``/model/`` folder; yields it, then shuts it down (for fixtures)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in state.items():
        setattr(srv, name, value)
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/model/"
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server():
    yield from local_server(Handler, files={}, modes={}, log=[], dropped={})


def serve(srv, files: dict[str, bytes]) -> dict[str, str]:
    srv.files.update(files)
    return {name: blob_sha1(data) for name, data in files.items()}


FILES = {"a.bin": bytes(range(256)) * 40, "b.bin": b"hello gpt1f\n" * 7}


def test_weights_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT1F_WEIGHTS", str(tmp_path / "env"))
    assert weights_dir(tmp_path / "arg") == tmp_path / "arg"
    assert weights_dir() == tmp_path / "env"
    monkeypatch.delenv("GPT1F_WEIGHTS")
    assert weights_dir() == pathlib.Path(__file__).resolve().parents[1] / "weights"


def test_base_url_precedence(monkeypatch):
    monkeypatch.delenv("GPT1F_BASE_URL", raising=False)
    assert resolve_base_url() == DEFAULT_BASE_URL
    assert DEFAULT_BASE_URL == ("https://raw.githubusercontent.com/openai/"
                                "finetune-transformer-lm/master/model/")
    monkeypatch.setenv("GPT1F_BASE_URL", "http://mirror/x")
    assert resolve_base_url() == "http://mirror/x/"
    assert resolve_base_url("http://arg/") == "http://arg/"


def test_git_blob_sha1(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert git_blob_sha1(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob


def test_table_matches_real_release_files():
    """The packaged copies of the release's small files are the release's, byte for byte."""
    assert len(RELEASE_SHA1) == 13
    for name in ("params_shapes.json", "encoder_bpe_40000.json", "vocab_40000.bpe"):
        assert git_blob_sha1(packaged_file(name)) == RELEASE_SHA1[name], name


def test_fetch_downloads_verifies_and_skips_present_files(server, tmp_path):
    sums = serve(server, FILES)
    out = fetch(list(FILES), tmp_path / "w", base_url=server.url, checksums=sums, progress=True)
    assert out == tmp_path / "w"
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    assert not list(out.glob("*.part"))
    n_requests = len(server.log)
    fetch(list(FILES), out, base_url=server.url, checksums=sums)
    assert len(server.log) == n_requests  # present files are not downloaded again


def test_base_url_from_environment(server, tmp_path, monkeypatch):
    sums = serve(server, FILES)
    monkeypatch.setenv("GPT1F_BASE_URL", server.url)
    fetch(["b.bin"], tmp_path, checksums=sums, progress=False)
    assert (tmp_path / "b.bin").read_bytes() == FILES["b.bin"]


def test_dropped_connection_keeps_part_and_next_fetch_resumes(server, tmp_path):
    sums = serve(server, FILES)
    server.modes["a.bin"] = "drop"
    with pytest.raises(DownloadError, match="a.bin"):
        fetch(["a.bin"], tmp_path, base_url=server.url, checksums=sums, progress=False, retries=0)
    part = tmp_path / "a.bin.part"
    half = len(FILES["a.bin"]) // 2
    assert part.read_bytes() == FILES["a.bin"][:half]
    assert not (tmp_path / "a.bin").exists()
    fetch(["a.bin"], tmp_path, base_url=server.url, checksums=sums, progress=False)
    assert server.log[-1] == ("a.bin", f"bytes={half}-")  # really resumed
    assert (tmp_path / "a.bin").read_bytes() == FILES["a.bin"]
    assert not part.exists()


def test_dropped_connection_is_retried_within_one_fetch(server, tmp_path):
    sums = serve(server, FILES)
    server.modes["a.bin"] = "drop"
    fetch(["a.bin"], tmp_path, base_url=server.url, checksums=sums, progress=False)
    assert [r for _, r in server.log] == [None, f"bytes={len(FILES['a.bin']) // 2}-"]
    assert (tmp_path / "a.bin").read_bytes() == FILES["a.bin"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    sums = serve(server, FILES)
    server.modes["a.bin"] = "norange"
    (tmp_path / "a.bin.part").write_bytes(b"stale partial bytes")
    fetch(["a.bin"], tmp_path, base_url=server.url, checksums=sums, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == FILES["a.bin"]


def test_complete_part_file_is_verified_without_refetching_bytes(server, tmp_path):
    sums = serve(server, FILES)
    (tmp_path / "b.bin.part").write_bytes(FILES["b.bin"])  # server answers 416
    fetch(["b.bin"], tmp_path, base_url=server.url, checksums=sums, progress=False)
    assert (tmp_path / "b.bin").read_bytes() == FILES["b.bin"]


def test_wrong_bytes_raise_checksum_error_and_nothing_is_renamed(server, tmp_path):
    sums = serve(server, FILES)
    server.modes["b.bin"] = "wrong"
    with pytest.raises(ChecksumError, match=f"b.bin.*expected {sums['b.bin']}"):
        fetch(["b.bin"], tmp_path, base_url=server.url, checksums=sums, progress=False)
    assert not (tmp_path / "b.bin").exists()
    assert not (tmp_path / "b.bin.part").exists()


def test_http_404_names_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"404.*\n.*missing.*nothere.bin"):
        fetch(["nothere.bin"], tmp_path, base_url=server.url, checksums={"nothere.bin": "0" * 40},
              progress=False)


def test_offline_names_urls_and_directory(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{srv.server_address[1]}/m/"
    srv.server_close()  # nothing listens there any more: connection refused
    with pytest.raises(DownloadError) as info:
        fetch(["a.bin", "b.bin"], tmp_path, base_url=url, checksums={"a.bin": "0", "b.bin": "0"},
              progress=False, retries=0)
    message = str(info.value)
    assert url + "a.bin" in message and url + "b.bin" in message and str(tmp_path) in message


def test_download_false_names_missing_files_directory_and_urls(tmp_path):
    (tmp_path / "params_0.npy").write_bytes(b"present")
    with pytest.raises(FileNotFoundError) as info:
        fetch(["params_0.npy", "params_1.npy"], tmp_path, download=False)
    message = str(info.value)
    assert "params_1.npy" in message and str(tmp_path) in message
    assert DEFAULT_BASE_URL + "params_1.npy" in message
    assert DEFAULT_BASE_URL + "params_0.npy" not in message


def test_unknown_name_without_checksum_is_refused(server, tmp_path):
    serve(server, FILES)
    with pytest.raises(KeyError, match="a.bin"):
        fetch(["a.bin"], tmp_path, base_url=server.url, progress=False)
    assert server.log == []


def test_load_openai_downloads_a_missing_release(server, tmp_path):
    cfg = Config.tiny()
    params = init_params(cfg, seed=3)
    source = save_openai(params, tmp_path / "source", cfg=cfg)
    files = {name: (source / name).read_bytes() for name in WEIGHT_NAMES}
    sums = serve(server, files)
    server.modes["params_4.npy"] = "drop"
    loaded, _ = load_openai(tmp_path / "dest", cfg=cfg, n_transfer=2, base_url=server.url,
                            checksums=sums, progress=False)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()
                  if not p.name.startswith(".")) == sorted(files)
    assert server.dropped == {"params_4.npy": True}
    assert torch.equal(loaded["model/h1/mlp/c_fc/w:0"], params["model/h1/mlp/c_fc/w:0"])


def test_load_openai_offline_with_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT1F_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_openai(download=False)
    message = str(info.value)
    assert str(tmp_path) in message and DEFAULT_BASE_URL + "params_9.npy" in message
