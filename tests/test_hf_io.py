"""The transformers ``openai-gpt`` layout: round trips through gpt1f and through transformers."""
import json

import pytest
import torch

from gpt1f import Config, init_params, param_shapes
from gpt1f.hf import load_hf, save_hf
from gpt1f.params import init_value

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

CFG = Config.tiny()  # n_vocab 50 + 3 special, n_ctx 16, 2 x 32 wide, 4 heads


def random_params(cfg, seed=0, n_class=1, dtype=torch.float32):
    """init_params with every gain and bias moved away from 1 and 0."""
    params = init_params(cfg, seed=seed, n_class=n_class, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=dtype) if v.ndim == 1 else v
            for k, v in params.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# transformers' module in block i -> the TF scope under model/h{i}/ (written from the two
# codebases' layer names, not from gpt1f.hf's table)
HF_BLOCK_MODULES = {"attn.c_attn": "attn/c_attn", "attn.c_proj": "attn/c_proj",
                    "mlp.c_fc": "mlp/c_fc", "mlp.c_proj": "mlp/c_proj", "ln_1": "ln_1", "ln_2": "ln_2"}


def state_as_tf(state: dict, cfg: Config) -> dict:
    """A transformers state dict (no prefix) mapped to TF names by hand, independent of gpt1f.hf.

    Every key of ``state`` must be placed (an unknown one raises KeyError). HF's Conv1D weight is
    TF's ``[1, nx, nf]`` filter without its leading axis; layer norms are ``g``/``b`` in TF.
    """
    out = {"model/we:0": torch.cat([state["tokens_embed.weight"], state["positions_embed.weight"]])}
    for name, t in state.items():
        if name in ("tokens_embed.weight", "positions_embed.weight"):
            continue
        if name.startswith("multiple_choice_head.summary."):
            kind = name.rsplit(".", 1)[1]
            out["model/clf/w:0" if kind == "weight" else "model/clf/b:0"] = t.T if kind == "weight" else t
            continue
        h, i, rest = name.split(".", 2)
        module, kind = rest.rsplit(".", 1)
        assert h == "h" and int(i) < cfg.n_layer and kind in ("weight", "bias"), name
        scope = f"model/h{i}/{HF_BLOCK_MODULES[module]}"
        if module.startswith("ln_"):
            out[f"{scope}/{'g' if kind == 'weight' else 'b'}:0"] = t
        else:
            out[f"{scope}/{'w' if kind == 'weight' else 'b'}:0"] = t[None] if kind == "weight" else t
    return out


def hf_state(model) -> dict:
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to tokens_embed.weight
    return state


@pytest.mark.parametrize("n_class", [1, 3])
def test_save_load_round_trip_is_exact(tmp_path, n_class):
    params = random_params(CFG, n_class=n_class)
    save_hf(params, tmp_path, cfg=CFG)
    loaded, cfg = load_hf(tmp_path)
    assert cfg == CFG
    assert_same(params, loaded)


def test_float64_round_trip(tmp_path):
    params = random_params(CFG, dtype=torch.float64)
    loaded, _ = load_hf(save_hf(params, tmp_path, cfg=CFG), dtype=torch.float64)
    assert_same(params, loaded)


def test_written_layout(tmp_path):
    params = random_params(CFG)
    save_hf(params, tmp_path, cfg=CFG)
    tensors = safetensors_torch.load_file(tmp_path / "model.safetensors")
    block = {f"h.{i}.{name}" for i in range(2) for name in (
        "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
        "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
        "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias")}
    head = {"multiple_choice_head.summary.weight", "multiple_choice_head.summary.bias"}
    assert tensors.keys() == block | head | {"tokens_embed.weight", "positions_embed.weight"}
    assert tensors["tokens_embed.weight"].shape == (53, 32)
    assert tensors["positions_embed.weight"].shape == (16, 32)
    assert tensors["h.1.attn.c_attn.weight"].shape == (32, 96)
    assert tensors["h.1.mlp.c_proj.weight"].shape == (128, 32)
    assert tensors["multiple_choice_head.summary.weight"].shape == (1, 32)
    assert torch.equal(tensors["h.0.mlp.c_fc.weight"], params["model/h0/mlp/c_fc/w:0"][0])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "openai-gpt" and config["vocab_size"] == 53
    assert (config["n_positions"], config["n_embd"], config["n_layer"], config["n_head"]) == (16, 32, 2, 4)
    assert config["layer_norm_epsilon"] == 1e-5 and config["afn"] == "gelu"


def test_transformers_reads_save_hf(tmp_path):
    params = random_params(CFG)
    save_hf(params, tmp_path, cfg=CFG)
    lm, info = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert set(info["unexpected_keys"]) == {"multiple_choice_head.summary.weight",
                                            "multiple_choice_head.summary.bias"}
    assert torch.equal(lm.lm_head.weight, params["model/we:0"][:53])
    mine = {k: v for k, v in params.items() if not k.startswith("model/clf/")}
    assert_same(state_as_tf(hf_state(lm), CFG), mine)
    double, info = transformers.OpenAIGPTDoubleHeadsModel.from_pretrained(
        tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert_same(state_as_tf(hf_state(double), CFG), params)


def test_head_false_loads_cleanly_and_load_hf_draws_the_head(tmp_path):
    params = random_params(CFG)
    save_hf(params, tmp_path, cfg=CFG, head=False)
    _, info = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    loaded, _ = load_hf(tmp_path, seed=7)
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(loaded["model/clf/w:0"], init_value("model/clf/w:0", (32, 1), generator))
    assert torch.equal(loaded["model/clf/b:0"], torch.zeros(1))
    assert torch.equal(loaded["model/h1/ln_2/g:0"], params["model/h1/ln_2/g:0"])


@pytest.mark.parametrize("cls", ["OpenAIGPTModel", "OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel"])
def test_transformers_save_pretrained_loads_exactly(tmp_path, cls):
    torch.manual_seed(0)
    hf_cfg = transformers.OpenAIGPTConfig(vocab_size=53, n_positions=16, n_embd=32, n_layer=2,
                                          n_head=4, n_special=3)
    model = getattr(transformers, cls)(hf_cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # gains and biases away from 1 and 0
    model.save_pretrained(tmp_path)
    loaded, cfg = load_hf(tmp_path)
    assert cfg == CFG
    expected = state_as_tf(hf_state(model), CFG)
    if "model/clf/w:0" not in expected:  # drawn from seed 0, the first draw of the generator
        generator = torch.Generator().manual_seed(0)
        expected["model/clf/w:0"] = init_value("model/clf/w:0", (32, 1), generator)
        expected["model/clf/b:0"] = torch.zeros(1)
    assert_same(expected, loaded)


def test_released_layout_without_special_tokens_gets_new_rows(tmp_path):
    base = CFG.replace(n_special=0)
    params = random_params(base)
    save_hf(params, tmp_path, cfg=base)
    plain, cfg = load_hf(tmp_path)
    assert cfg == base
    loaded, cfg = load_hf(tmp_path, n_special=3, seed=4)
    assert cfg == CFG
    assert loaded["model/we:0"].shape == param_shapes(CFG)["model/we:0"]
    we = params["model/we:0"]
    assert torch.equal(loaded["model/we:0"][:50], we[:50])
    assert torch.equal(loaded["model/we:0"][53:], we[50:])
    generator = torch.Generator().manual_seed(4)
    assert torch.equal(loaded["model/we:0"][50:53], init_value("model/we:0", (3, 32), generator))
    assert torch.equal(loaded["model/clf/w:0"], params["model/clf/w:0"])


# ---- bad input: errors name the file or key and what was expected ----

@pytest.fixture
def saved(tmp_path):
    save_hf(random_params(CFG), tmp_path, cfg=CFG)
    return tmp_path


def rewrite(directory, change):
    path = directory / "model.safetensors"
    tensors = safetensors_torch.load_file(path)
    change(tensors)
    safetensors_torch.save_file(tensors, path, metadata={"format": "pt"})


def test_missing_files(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf(saved)
    (saved / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(saved)


def test_unknown_key(saved):
    rewrite(saved, lambda t: t.update({"h.2.ln_1.weight": torch.ones(32)}))
    with pytest.raises(KeyError, match=r"model.safetensors.*unknown keys \['h.2.ln_1.weight'\]"):
        load_hf(saved)


def test_missing_key(saved):
    rewrite(saved, lambda t: t.pop("h.1.mlp.c_fc.bias"))
    with pytest.raises(KeyError, match=r"model.safetensors.*missing keys \['h.1.mlp.c_fc.bias'\]"):
        load_hf(saved)


def test_half_a_head(saved):
    rewrite(saved, lambda t: t.pop("multiple_choice_head.summary.bias"))
    with pytest.raises(KeyError, match="multiple_choice_head.summary.bias"):
        load_hf(saved)


def test_shape_mismatch(saved):
    rewrite(saved, lambda t: t.update({"h.0.attn.c_attn.weight": torch.zeros(96, 32)}))
    with pytest.raises(ValueError, match=r"h.0.attn.c_attn.weight has shape \[96, 32\], expected \[32, 96\]"):
        load_hf(saved)


def test_untied_lm_head(saved):
    rewrite(saved, lambda t: t.update({"lm_head.weight": torch.zeros(53, 32)}))
    with pytest.raises(ValueError, match="lm_head.weight differs from tokens_embed.weight"):
        load_hf(saved)


def test_wrong_model_type_and_epsilon(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config.json: model_type is 'gpt2'"):
        load_hf(saved)
    (saved / "config.json").write_text(json.dumps({**config, "layer_norm_epsilon": 1e-6}))
    with pytest.raises(ValueError, match=r"config.json: layer_norm_epsilon=1e-06"):
        load_hf(saved)


def test_conflicting_special_tokens(saved):
    with pytest.raises(ValueError, match="holds 3 special-token rows, n_special=2"):
        load_hf(saved, n_special=2)


def test_save_hf_checks_params(tmp_path):
    params = random_params(CFG)
    params["model/h9/ln_1/g:0"] = torch.ones(32)
    with pytest.raises(KeyError, match="model/h9/ln_1/g:0"):
        save_hf(params, tmp_path, cfg=CFG)
    params = random_params(CFG)
    params["model/we:0"] = params["model/we:0"][:-1]
    with pytest.raises(ValueError, match=r"model/we:0.*\[68, 32\].*\[69, 32\]"):
        save_hf(params, tmp_path, cfg=CFG)
