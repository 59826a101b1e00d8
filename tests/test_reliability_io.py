"""Files and processes under faults (issue 14): downloads, saves, loads, CSVs, checkpoints.

Concurrency runs real processes with bounded loops; servers listen on 127.0.0.1 only; a killed save
is a forked child that ``os._exit``s just before one of its file-system commits.
"""
import errno
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from gpt1f import Config, checkpoint as ck, download, init_params
from gpt1f.download import ChecksumError, DownloadError, fetch
from gpt1f.hf import load_hf, save_hf
from gpt1f.openai_release import load_openai, read_shapes, save_openai
from gpt1f.rocstories import DataError, read_cloze_csv, write_synthetic_csv
from gpt1f.text.vocab import VocabularyError, load_vocabulary
from tests.test_download import local_server
from tests.conftest import ROOT

CFG = Config.tiny()


def blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------- a scriptable local server

class Handler(http.server.BaseHTTPRequestHandler):
    """``server.serve(handler, name, range_start)`` decides each response."""

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        start = int(rng[len("bytes="):].rstrip("-")) if rng else 0
        self.server.log.append((name, start))
        self.server.respond(self, name, start)

    def log_message(self, *args):
        pass

    def send_body(self, body: bytes, start: int, piece: int = 1 << 20, pause: float = 0.0,
                  length: str | None = None):
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", length if length is not None else str(len(body) - start))
        self.end_headers()
        for lo in range(start, len(body), piece):
            self.wfile.write(body[lo:lo + piece])
            self.wfile.flush()
            time.sleep(pause)
        self.close_connection = True


@pytest.fixture
def server():
    yield from local_server(Handler, daemon_threads=True, log=[])


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ---------------------------------------------------------------- item 1: concurrent downloads

FETCH_ONE = """
import os, sys, time
from gpt1f.download import fetch
while not os.path.exists(sys.argv[4]):      # the second process starts when told to
    time.sleep(0.01)
fetch(['blob.bin'], sys.argv[1], base_url=sys.argv[2], checksums={'blob.bin': sys.argv[3]},
      progress=False)
"""


def test_two_processes_fetching_one_file_end_with_one_verified_copy(server, tmp_path):
    data = np.random.default_rng(0).bytes(4 << 20)
    server.respond = lambda h, name, start: h.send_body(data, start, piece=64 << 10, pause=0.02)
    folder, go = tmp_path / "w", tmp_path / "go"
    folder.mkdir()
    args = [sys.executable, "-c", FETCH_ONE, str(folder), server.url, blob_sha1(data)]
    first = subprocess.Popen([*args, str(tmp_path)], env=env(), stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([*args, str(go)], env=env(), stderr=subprocess.PIPE, text=True)
    part = folder / "blob.bin.part"
    deadline = time.time() + 30
    while not (part.is_file() and part.stat().st_size > (512 << 10)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()                             # the first is a quarter of the way through
    errors = [p.communicate(timeout=60)[1] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], errors
    assert (folder / "blob.bin").read_bytes() == data
    assert not part.exists()


# ---------------------------------------------------------------- item 15: a trickling server

def test_a_trickling_server_fails_the_download_naming_the_url(server, tmp_path, monkeypatch):
    def trickle(h, name, start):
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 20))
        h.end_headers()
        for _ in range(200):                # 10 bytes / 0.05 s for at most 10 s
            try:
                h.wfile.write(b"x" * 10)
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)
    server.respond = trickle
    monkeypatch.setattr(download, "MIN_RATE_BYTES_S", 1000, raising=False)
    monkeypatch.setattr(download, "RATE_WINDOW_S", 0.5, raising=False)
    outcome = []

    def run():
        try:
            fetch(["slow.bin"], tmp_path, base_url=server.url, checksums={"slow.bin": "0" * 40},
                  progress=False, retries=0)
            outcome.append(None)
        except Exception as e:
            outcome.append(e)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert outcome, "the download was still running after 5 s"
    assert isinstance(outcome[0], DownloadError)
    assert server.url + "slow.bin" in str(outcome[0]) and "bytes/s" in str(outcome[0])


# ---------------------------------------------------------------- unclear download errors

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("when", ["open", "write"])
def test_disk_errors_during_a_download_are_not_connection_errors(server, tmp_path, monkeypatch,
                                                                  code, when):
    data = b"abc" * 1000
    server.respond = lambda h, name, start: h.send_body(data, start)
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, chunk):
            raise OSError(code, os.strerror(code))

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".part") and ("w" in mode or "a" in mode):
            if when == "open":
                raise OSError(code, os.strerror(code), str(path))
            return Full(real_open(path, mode, *args, **kwargs))
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr(download, "open", fake_open, raising=False)
    with pytest.raises(OSError) as info:
        fetch(["d.bin"], tmp_path, base_url=server.url, checksums={"d.bin": blob_sha1(data)},
              progress=False)
    assert not isinstance(info.value, DownloadError), info.value
    assert os.strerror(code) in str(info.value) and "d.bin.part" in str(info.value)
    assert len(server.log) == 1  # not retried


def test_a_non_numeric_content_length_names_the_url(server, tmp_path):
    data = b"hello" * 10
    server.respond = lambda h, name, start: h.send_body(data, start, length="lots")
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*/model/c\.bin.*Content-Length"):
        fetch(["c.bin"], tmp_path, base_url=server.url, checksums={"c.bin": blob_sha1(data)},
              progress=False, retries=0)


def test_an_upper_case_checksum_is_the_same_checksum(server, tmp_path):
    data = b"upper case hex\n" * 30
    server.respond = lambda h, name, start: h.send_body(data, start)
    fetch(["u.bin"], tmp_path, base_url=server.url, checksums={"u.bin": blob_sha1(data).upper()},
          progress=False)
    assert (tmp_path / "u.bin").read_bytes() == data


# ---------------------------------------------------------------- item 9: files in place are verified

@pytest.fixture
def release(tmp_path):
    params = init_params(CFG, seed=1)
    return save_openai(params, tmp_path / "release", cfg=CFG), params


def load(path, **kw):
    return load_openai(path, **{"cfg": CFG, "n_transfer": 2, "download": False, "progress": False,
                                **kw})


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_shard_is_found(release):
    path, _ = release
    flip_last_byte(path / "params_3.npy")
    with pytest.raises(ChecksumError, match="params_3.npy"):
        load(path)


def test_swapped_shards_are_found(release):
    path, _ = release
    sizes = {n: (path / f"params_{n}.npy").stat().st_size for n in range(10)}
    a, b = next((a, b) for a in range(10) for b in range(a + 1, 10) if sizes[a] == sizes[b])
    pa, pb = path / f"params_{a}.npy", path / f"params_{b}.npy"
    da, db = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(db)
    pb.write_bytes(da)
    with pytest.raises(ChecksumError, match=f"params_{a}.npy"):
        load(path)


def test_a_nan_written_into_a_shard_is_found(release):
    path, _ = release
    shard = path / "params_5.npy"
    values = np.load(shard)
    values[len(values) // 2] = np.nan
    np.save(shard, values)
    with pytest.raises((ChecksumError, ValueError), match="params_5.npy"):
        load(path)


def test_files_that_are_not_the_release_and_have_no_manifest_are_refused(release):
    path, _ = release
    for extra in path.iterdir():
        if not (extra.name.startswith("params_") or extra.name == "params_shapes.json"):
            extra.unlink()
    with pytest.raises(ChecksumError, match=r"params_shapes.json|params_\d.npy"):
        load(path)


def test_verified_files_are_not_hashed_again_until_they_change(release, monkeypatch):
    path, params = release
    calls = []
    real = download.git_blob_sha1
    monkeypatch.setattr(download, "git_blob_sha1", lambda p: calls.append(p) or real(p))
    loaded, _ = load(path)
    assert torch.equal(loaded["model/h1/mlp/c_fc/w:0"], params["model/h1/mlp/c_fc/w:0"])
    assert calls == []                        # save_openai recorded what it wrote
    os.utime(path / "params_2.npy", ns=(1, 1))
    load(path)
    assert [p.name for p in calls] == ["params_2.npy"]
    calls.clear()
    load(path)
    assert calls == []


def write_vocab(tmp_path, encoder_text: str, merges: list[str]):
    enc, bpe = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    enc.write_text(encoder_text)
    bpe.write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return enc, bpe


ENCODER = {"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab": 4, "ab</w>": 5}


def test_a_duplicated_merge_line_is_refused(tmp_path):
    enc, bpe = write_vocab(tmp_path, json.dumps(ENCODER), ["a b", "a b</w>"])
    load_vocabulary(enc, bpe)                               # the clean pair loads
    enc, bpe = write_vocab(tmp_path, json.dumps(ENCODER), ["a b", "a b</w>", "a b"])
    with pytest.raises(VocabularyError, match=r"vocab.bpe, line 4: .*line 2"):
        load_vocabulary(enc, bpe)


def test_duplicate_pieces_and_ids_in_the_encoder_are_refused(tmp_path):
    text = json.dumps(ENCODER)[:-1] + ', "ab": 6}'
    enc, bpe = write_vocab(tmp_path, text, ["a b", "a b</w>"])
    with pytest.raises(VocabularyError, match=r"encoder.json.*'ab'.*twice"):
        load_vocabulary(enc, bpe)
    enc, bpe = write_vocab(tmp_path, json.dumps({**ENCODER, "ab</w>": 4}), ["a b", "a b</w>"])
    with pytest.raises(VocabularyError, match=r"encoder.json.*id 4.*'ab'.*'ab</w>'"):
        load_vocabulary(enc, bpe)


# ---------------------------------------------------------------- item 3: interrupted saves

def run_killed_at(event: int, fn) -> int:
    """Run ``fn`` in a forked child that dies (``os._exit(9)``) just before its ``event``-th
    file-system commit (a rename, unlink or whole-file write); 0 if it finished first."""
    pid = os.fork()
    if pid == 0:
        count = [0]

        def hook(real):
            def wrapped(*args, **kwargs):
                count[0] += 1
                if count[0] == event:
                    os._exit(9)
                return real(*args, **kwargs)
            return wrapped
        try:
            for name in ("replace", "rename", "unlink", "remove"):
                setattr(os, name, hook(getattr(os, name)))
            for name in ("write_text", "write_bytes"):
                setattr(pathlib.Path, name, hook(getattr(pathlib.Path, name)))
            fn()
            os._exit(0)
        except BaseException:
            os._exit(1)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    raise AssertionError("the saving child hung")


def same_params(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_save_openai_never_loads_a_mix(tmp_path):
    old, new = init_params(CFG, seed=1), init_params(CFG, seed=2)
    reference = tmp_path / "reference"
    loaded_old, _ = load(save_openai(old, reference / "old", cfg=CFG))
    loaded_new, _ = load(save_openai(new, reference / "new", cfg=CFG))
    for event in range(1, 40):
        folder = tmp_path / f"killed_{event}"
        save_openai(old, folder, cfg=CFG)
        code = run_killed_at(event, lambda: save_openai(new, folder, cfg=CFG))
        assert code in (0, 9), code
        try:
            got, _ = load(folder)
        except (ValueError, OSError) as e:
            assert str(folder) in str(e), e
        else:
            assert same_params(got, loaded_old) or same_params(got, loaded_new), \
                f"killed before commit {event}: a mix of the old and new save loads"
        if code == 0:
            break


def test_an_interrupted_save_hf_never_pairs_new_weights_with_the_old_config(tmp_path):
    old_cfg, new_cfg = CFG, CFG.replace(n_head=2)
    old, new = init_params(old_cfg, seed=1), init_params(new_cfg, seed=2)
    for event in range(1, 20):
        folder = tmp_path / f"killed_{event}"
        save_hf(old, folder, cfg=old_cfg)
        code = run_killed_at(event, lambda: save_hf(new, folder, cfg=new_cfg))
        assert code in (0, 9), code
        try:
            got, cfg = load_hf(folder)
        except (ValueError, OSError, KeyError) as e:
            assert str(folder) in str(e), e
        else:
            assert ((cfg, True) == (old_cfg.replace(pretrained=False), same_params(got, old))
                    or (cfg, True) == (new_cfg, same_params(got, new))), \
                f"killed before commit {event}: loaded n_head={cfg.n_head} with the other weights"
        if code == 0:
            break


# ---------------------------------------------------------------- load_hf and params_shapes.json

def test_a_corrupt_safetensors_file_is_named(tmp_path):
    folder = save_hf(init_params(CFG, seed=0), tmp_path / "hf", cfg=CFG)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + weights.read_bytes()[24:])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf(folder)


def test_a_sharded_safetensors_checkpoint_loads(tmp_path):
    from safetensors.torch import load_file, save_file
    params = init_params(CFG, seed=4)
    folder = save_hf(params, tmp_path / "hf", cfg=CFG)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, own in shards.items():
        save_file({k: tensors[k] for k in own}, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in own})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    loaded, cfg = load_hf(folder)
    assert same_params(loaded, params)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_hf(folder)


@pytest.mark.parametrize("text, key", [
    (b"[1, 2, 3]", "object"), (b"\xff\xfe{}", "UTF-8"),
    (None, "n_head")])
def test_a_bad_config_json_is_named(tmp_path, text, key):
    folder = save_hf(init_params(CFG, seed=0), tmp_path / "hf", cfg=CFG)
    config = folder / "config.json"
    if text is None:
        hf = json.loads(config.read_text())
        hf["n_head"] = "4"
        text = json.dumps(hf).encode()
    config.write_bytes(text)
    with pytest.raises(ValueError, match=rf"config.json.*{key}"):
        load_hf(folder)


@pytest.mark.parametrize("entry", [[20.0, 32], ["20", 32], [20, True]])
def test_params_shapes_with_non_integer_sizes_is_named(release, entry):
    path, _ = release
    shapes = json.loads((path / "params_shapes.json").read_text())
    shapes[0] = entry
    (path / "params_shapes.json").write_text(json.dumps(shapes))
    with pytest.raises(ValueError, match=r"params_shapes.json.*entry 0"):
        read_shapes(path / "params_shapes.json")


def test_params_shapes_missing_a_block_is_named(release):
    path, _ = release
    shapes = json.loads((path / "params_shapes.json").read_text())
    (path / "params_shapes.json").write_text(json.dumps(shapes[:2 + 12]))
    with pytest.raises(ValueError, match=r"params_shapes.json.*1 block"):
        load(path)


# ---------------------------------------------------------------- item 5: CSV field counts

def test_rows_with_more_fields_than_the_header_are_refused(tmp_path):
    path = tmp_path / "cloze.csv"
    write_synthetic_csv(path, n_rows=5, seed=0)
    read_cloze_csv(path, require_labels=True)
    lines = path.read_text().splitlines()
    # pandas reads a first column without a header as the index: every column shifts by one
    path.write_text("\n".join([lines[0]] + ["extra," + line for line in lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"cloze.csv.*line 2.*9 fields.*header has 8"):
        read_cloze_csv(path, require_labels=True)
    path.write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0]] + lines[4:]) + "\n")
    with pytest.raises(DataError, match=r"line 4.*7 fields"):
        read_cloze_csv(path, require_labels=True)


# ---------------------------------------------------------------- items 10, 13, 14: checkpoints

def state(seed=0):
    return {"params": init_params(CFG, seed=seed)}


def test_saving_a_step_that_exists_is_an_error(tmp_path):
    ck.save(tmp_path, 3, state(0), {"n": 0})
    with pytest.raises(ck.CheckpointError, match=r"step 3 .*exists"):
        ck.save(tmp_path, 3, state(1), {"n": 1})
    restored, meta = ck.restore(tmp_path, state(2))
    assert meta == {"n": 0} and torch.equal(restored["params"]["model/we:0"],
                                            state(0)["params"]["model/we:0"])
    ck.save(tmp_path, 3, state(1), {"n": 1}, replace=True)
    assert ck.read_meta(tmp_path) == {"n": 1}


def damage_state(step_dir):
    shutil.rmtree(step_dir / "state")


def damage_truncate(step_dir):
    biggest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:len(biggest.read_bytes()) // 2])


def damage_metadata(step_dir):
    for p in step_dir.rglob("*METADATA*"):
        if p.is_file():
            p.write_text("{garbled")


@pytest.mark.parametrize("damage", [damage_state, damage_truncate, damage_metadata])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, damage):
    for step in (1, 2):
        ck.save(tmp_path, step, state(step), {"step": step})
    damage(tmp_path / "2")
    restored, meta, step, damaged = ck.restore_intact(tmp_path, state(0))
    assert step == 1 and meta == {"step": 1}
    assert torch.equal(restored["params"]["model/we:0"], state(1)["params"]["model/we:0"])
    assert len(damaged) == 1 and str(tmp_path / "2") in damaged[0]


def test_a_step_folder_being_deleted_is_not_listed(tmp_path):
    for step in (1, 2):
        ck.save(tmp_path, step, state(step), {"step": step}, max_to_keep=None)
    for p in sorted((tmp_path / "1").rglob("*"), reverse=True):   # rmtree half-way through
        if p.is_file():
            p.unlink()
    assert ck.steps(tmp_path) == [2] and ck.latest_step(tmp_path) == 2


WRITER = """
import sys, time, torch
from gpt1f import checkpoint as ck
end = time.time() + float(sys.argv[2])
step = 1
while time.time() < end:
    ck.save(sys.argv[1], step, {'x': torch.full((64,), float(step))}, {'step': step}, max_to_keep=1)
    step += 1
print(step)
"""


def test_readers_tolerate_a_concurrent_writer(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "6"], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors, reads = [], 0
    end = time.time() + 30
    while writer.poll() is None and time.time() < end:
        try:
            found = ck.steps(tmp_path)
            ck.latest_step(tmp_path)
            if found:
                ck.read_meta(tmp_path)
            reads += 1
            time.sleep(0.002)                     # leave the writer some CPU
        except ck.CheckpointError:
            pass                                  # no step yet
        except Exception as e:
            errors.append(repr(e))
    out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert errors == [], errors[:3]
    assert reads > 0 and int(out) > 2


def test_non_finite_weights_in_a_safetensors_file_are_refused(tmp_path):
    params = init_params(CFG, seed=0)
    params["model/h1/ln_2/g:0"] = params["model/h1/ln_2/g:0"].clone()
    params["model/h1/ln_2/g:0"][3] = float("inf")
    folder = save_hf(params, tmp_path / "hf", cfg=CFG)
    with pytest.raises(ValueError, match=r"model.safetensors.*model/h1/ln_2/g:0"):
        load_hf(folder)
