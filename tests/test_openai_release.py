"""Reading and writing the original release format, on synthetic shards the tests write themselves."""
import json
import pathlib

import numpy as np
import pytest
import torch

from gpt1f import Config, init_params, param_shapes
from gpt1f.download import SHARD_NAMES, WEIGHT_NAMES, git_blob_sha1, write_manifest
from gpt1f.openai_release import (Release, array_pieces, load_openai, read_shapes, save_openai,
                                  shapes_json)
from gpt1f.params import LAYER_VARIABLES, init_value
from gpt1f.release_data import path as packaged_file

CFG = Config.tiny()  # n_vocab 50, n_special 3, n_ctx 16, n_embd 32, 2 layers


def release_arrays(cfg: Config, n_ctx: int, seed: int) -> list[np.ndarray]:
    """Random arrays in release order: positions, tokens, 12 per block."""
    rng = np.random.default_rng(seed)
    e = cfg.n_embd
    block = [(1, e, 3 * e), (3 * e,), (1, e, e), (e,), (e,), (e,),
             (1, e, 4 * e), (4 * e,), (1, 4 * e, e), (e,), (e,), (e,)]
    shapes = [(n_ctx, e), (cfg.n_vocab, e)] + block * cfg.n_layer
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def write_release(directory: pathlib.Path, arrays, dtype=np.float32) -> pathlib.Path:
    """The release layout, written the straightforward way: concatenate, split in ten, np.save."""
    directory.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(dtype)
    for name, piece in zip(SHARD_NAMES, np.array_split(flat, 10)):
        np.save(directory / name, piece)
    (directory / "params_shapes.json").write_text(json.dumps([list(a.shape) for a in arrays]))
    # not the release's files: a manifest vouches for them (load_openai verifies every file)
    write_manifest(directory, {n: git_blob_sha1(directory / n) for n in WEIGHT_NAMES})
    return directory


@pytest.fixture
def release(tmp_path):
    arrays = release_arrays(CFG, n_ctx=20, seed=0)
    return write_release(tmp_path / "release", arrays), arrays


def block_names(i: int) -> list[str]:
    return [f"model/h{i}/{v}" for v in LAYER_VARIABLES]


def test_load_places_every_release_array(release):
    path, arrays = release
    params, cfg = load_openai(path, cfg=CFG, n_transfer=2, download=False)
    assert cfg == CFG
    assert {k: tuple(v.shape) for k, v in params.items()} == param_shapes(CFG)
    assert all(v.dtype == torch.float32 for v in params.values())
    we = params["model/we:0"].numpy()
    np.testing.assert_array_equal(we[:CFG.n_vocab], arrays[1])
    np.testing.assert_array_equal(we[CFG.pos_offset:], arrays[0][:CFG.n_ctx])  # 16 of 20 rows
    for i in range(2):
        for name, array in zip(block_names(i), arrays[2 + 12 * i:]):
            np.testing.assert_array_equal(params[name].numpy(), array, err_msg=name)


def test_special_rows_and_head_come_from_the_seed(release):
    path, _ = release
    a, _ = load_openai(path, cfg=CFG, n_transfer=2, seed=5, download=False)
    b, _ = load_openai(path, cfg=CFG, n_transfer=2, seed=5, download=False)
    c, _ = load_openai(path, cfg=CFG, n_transfer=2, seed=6, download=False)
    special = slice(CFG.n_vocab, CFG.pos_offset)
    generator = torch.Generator().manual_seed(5)
    expected = init_value("model/we:0", (CFG.n_special, CFG.n_embd), generator)
    assert torch.equal(a["model/we:0"][special], expected)
    assert torch.equal(a["model/clf/w:0"], init_value("model/clf/w:0", (CFG.n_embd, 1), generator))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model/we:0"][special], c["model/we:0"][special])


@pytest.mark.parametrize("n_transfer", [-1, 0, 1, 2])
def test_n_transfer_follows_the_tf_original(release, n_transfer):
    """TF assigns its first 1 + 12 * n_transfer variables; -1 assigns none."""
    path, arrays = release
    params, _ = load_openai(path, cfg=CFG, n_transfer=n_transfer, download=False)
    tokens = params["model/we:0"][:CFG.n_vocab].numpy()
    assert np.array_equal(tokens, arrays[1]) == (n_transfer >= 0)
    for i in range(CFG.n_layer):
        w = params[f"model/h{i}/attn/c_attn/w:0"].numpy()
        g = params[f"model/h{i}/ln_1/g:0"]
        assert np.array_equal(w, arrays[2 + 12 * i]) == (i < n_transfer)
        if i >= n_transfer:
            assert torch.equal(g, torch.ones_like(g))
            assert 0.01 < w.std() < 0.03  # N(0, 0.02)


def test_load_save_load_is_exact_and_byte_identical(release, tmp_path):
    path, arrays = release
    cfg = CFG.replace(n_ctx=20)  # the whole release, so save writes it all back
    first, _ = load_openai(path, cfg=cfg, n_transfer=2, download=False)
    saved = save_openai(first, tmp_path / "saved", cfg=cfg)
    second, _ = load_openai(saved, cfg=cfg, n_transfer=2, download=False)
    assert all(torch.equal(first[k], second[k]) for k in first)
    for name in (*SHARD_NAMES, "params_shapes.json"):
        assert (saved / name).read_bytes() == (path / name).read_bytes(), name
    assert not list(saved.glob("*.tmp"))


def test_float64_shards_are_converted(tmp_path):
    arrays = release_arrays(CFG, n_ctx=16, seed=1)
    path = write_release(tmp_path / "f64", arrays, dtype=np.float64)
    params, _ = load_openai(path, cfg=CFG, n_transfer=2, download=False)
    assert params["model/h1/mlp/c_proj/w:0"].dtype == torch.float32
    np.testing.assert_array_equal(params["model/h1/mlp/c_proj/w:0"].numpy(), arrays[2 + 12 + 8])


def test_save_openai_from_float64_params(tmp_path):
    params = init_params(CFG, seed=2, dtype=torch.float64)
    loaded, _ = load_openai(save_openai(params, tmp_path, cfg=CFG), cfg=CFG, n_transfer=2,
                            download=False)
    assert torch.equal(loaded["model/h0/mlp/c_fc/w:0"], params["model/h0/mlp/c_fc/w:0"].float())


def test_array_pieces_cover_every_value_once():
    sizes, counts = [3, 7, 1, 9], [5, 5, 5, 5]
    flat = np.arange(20)
    shards = np.split(flat, np.cumsum(counts)[:-1])
    pieces = array_pieces(counts, sizes)
    rebuilt = [np.concatenate([shards[s][a:a + n] for s, a, n in own]) for own in pieces]
    expected = np.split(flat, np.cumsum(sizes)[:-1])
    assert all(np.array_equal(r, e) for r, e in zip(rebuilt, expected))


def test_real_shapes_file_is_parsed_and_reproduced():
    release = read_shapes(packaged_file("params_shapes.json"))
    assert release == Release(n_ctx=512, n_vocab=40478, n_embd=768, n_layer=12)
    assert shapes_json(release) == packaged_file("params_shapes.json").read_text()


# ---- bad input: every error names the file or variable and what was expected ----

def load(path, **kw):
    return load_openai(path, **{"cfg": CFG, "n_transfer": 2, "download": False, **kw})


def test_missing_shard(release):
    path, _ = release
    (path / "params_7.npy").unlink()
    with pytest.raises(FileNotFoundError, match="params_7.npy"):
        load(path)


def test_missing_shapes_file(release):
    path, _ = release
    (path / "params_shapes.json").unlink()
    with pytest.raises(FileNotFoundError, match="params_shapes.json"):
        load(path)


def test_truncated_shard(release):
    path, _ = release
    shard = path / "params_3.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"params_3.npy: truncated or corrupt"):
        load(path)


def test_corrupt_shard_header(release):
    path, _ = release
    shard = path / "params_5.npy"
    shard.write_bytes(b"garbage!" + shard.read_bytes()[8:])
    with pytest.raises(ValueError, match=r"params_5.npy: not a valid .npy"):
        load(path)


def test_shard_that_is_not_a_flat_float_array(release):
    path, _ = release
    np.save(path / "params_1.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"params_1.npy: expected a 1-D float array.*\(2, 3\)"):
        load(path)
    np.save(path / "params_1.npy", np.zeros(6, np.int32))
    with pytest.raises(ValueError, match=r"params_1.npy: expected a 1-D float array.*int32"):
        load(path)


def test_total_size_not_matching_the_shapes(release):
    path, _ = release
    np.save(path / "params_9.npy", np.concatenate([np.load(path / "params_9.npy"), [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"hold \d+ values but params_shapes.json describes"):
        load(path)


def test_shape_mismatch_in_shapes_file(release):
    path, arrays = release
    shapes = [list(a.shape) for a in arrays]
    shapes[2 + 12 + 6] = [1, 32, 100]
    (path / "params_shapes.json").write_text(json.dumps(shapes))
    with pytest.raises(ValueError, match=r"entry 20 \(model/h1/mlp/c_fc/w:0\).*\[1, 32, 100\]"):
        load(path)


def test_shapes_file_not_json(release):
    path, _ = release
    (path / "params_shapes.json").write_text("[[512, 768], oops")
    with pytest.raises(ValueError, match="params_shapes.json: not a JSON list"):
        load(path)


def test_config_that_does_not_fit_the_release(release):
    path, _ = release
    with pytest.raises(ValueError, match=r"cfg.n_embd=64 but .*params_shapes.json has n_embd=32"):
        load(path, cfg=CFG.replace(n_embd=64))
    with pytest.raises(ValueError, match=r"cfg.n_vocab=49 .* n_vocab=50"):
        load(path, cfg=CFG.replace(n_vocab=49))
    with pytest.raises(ValueError, match=r"cfg.n_ctx=21 exceeds the 20 position"):
        load(path, cfg=CFG.replace(n_ctx=21))
    with pytest.raises(ValueError, match=r"n_transfer=3 must lie in \[-1, 2\]"):
        load(path, n_transfer=3)


def test_pretrained_n_ctx_above_512_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_ctx=513"):
        load_openai(tmp_path, n_ctx=513, download=False)


def test_save_openai_checks_names_and_shapes(tmp_path):
    params = init_params(CFG, seed=0)
    del params["model/h1/ln_2/b:0"]
    with pytest.raises(KeyError, match="model/h1/ln_2/b:0"):
        save_openai(params, tmp_path, cfg=CFG)
    params = init_params(CFG, seed=0)
    params["model/h0/attn/c_proj/w:0"] = torch.zeros(32, 32)
    with pytest.raises(ValueError, match=r"model/h0/attn/c_proj/w:0.*\[32, 32\].*\[1, 32, 32\]"):
        save_openai(params, tmp_path, cfg=CFG)
    assert list(tmp_path.iterdir()) == []
