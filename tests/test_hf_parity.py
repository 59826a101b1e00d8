"""Same parameters, same numbers: gpt1f against transformers' OpenAIGPT classes in eval mode.

The parameters reach transformers only through ``save_hf`` + ``from_pretrained``, so this also checks
the name table. The one known difference in the maths is the causal-mask constant: TF (and gpt1f)
fill masked attention logits with -1e9, transformers with -1e4. Both underflow to exactly 0 after
``exp`` in float32 and float64 (exp(-1e4) < 1e-4000), so with attention logits far below 1e4 in
size the outputs agree to rounding. Outputs here are of size ~3; the largest differences measured
were 2.0e-6 in float32 and 3.6e-15 in float64 (hidden states after every block, LM logits,
multiple-choice scores), so the tolerances below are max abs diff <= 5e-6 and <= 1e-14.
"""
import pytest
import torch

from gpt1f import Config, heads, init_params
from gpt1f.hf import save_hf
from gpt1f.model import embed, lm_logits, transformer

transformers = pytest.importorskip("transformers")

TOLERANCE = {torch.float32: 5e-6, torch.float64: 1e-14}


def random_params(cfg: Config, dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights 10x the init scale (std 0.2) so attention is far from uniform; gains and biases
    moved away from 1 and 0 so a swapped gain/bias or ln_1/ln_2 shows."""
    params = init_params(cfg, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    noise = {k: 0.3 * torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()}
    return {k: v + noise[k] if v.ndim == 1 else 10 * v for k, v in params.items()}


def hf_model(cls, params, cfg, dtype, directory):
    save_hf(params, directory, cfg=cfg)
    model = getattr(transformers, cls).from_pretrained(directory, dtype=dtype).eval()
    assert next(model.parameters()).dtype == dtype
    return model


def tokens_for(cfg: Config, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.n_vocab + cfg.n_special, shape, generator=g)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a - b).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("afn", ["gelu", "relu", "swish"])
def test_hidden_states_after_every_block(tmp_path, dtype, afn):
    cfg = Config.tiny(afn=afn, n_layer=3)
    params = random_params(cfg, dtype)
    model = hf_model("OpenAIGPTModel", params, cfg, dtype, tmp_path)
    tokens = tokens_for(cfg, (2, cfg.n_ctx))
    with torch.no_grad():
        theirs = model(tokens, output_hidden_states=True).hidden_states  # embeddings, block 1..L
        for k, hf_hidden in enumerate(theirs):
            first_k = {name: v for name, v in params.items()    # the first k blocks alone
                       if not name.startswith("model/h") or int(name[7:].split("/")[0]) < k}
            ours = (transformer(first_k, tokens, cfg=cfg.replace(n_layer=k)) if k else
                    embed(params["model/we:0"], tokens, cfg=cfg))
            assert max_diff(ours, hf_hidden) <= TOLERANCE[dtype], f"after {k} blocks"
    assert len(theirs) == cfg.n_layer + 1
    assert theirs[-1].abs().mean() > 0.1  # a real signal, not all zeros


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lm_logits(tmp_path, dtype):
    """transformers' head covers the token and special rows; ours also scores the position rows."""
    cfg = Config.tiny()
    params = random_params(cfg, dtype)
    model = hf_model("OpenAIGPTLMHeadModel", params, cfg, dtype, tmp_path)
    tokens = tokens_for(cfg, (3, 11), seed=1)
    with torch.no_grad():
        theirs = model(tokens).logits
        ours = lm_logits(params, transformer(params, tokens, cfg=cfg), cfg=cfg)
    assert ours.shape == (3, 11, cfg.n_rows)
    n_tokens = cfg.n_vocab + cfg.n_special
    assert theirs.shape == (3, 11, n_tokens)
    assert max_diff(ours[..., :n_tokens], theirs) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multiple_choice_head(tmp_path, dtype):
    """``model/clf`` saved as ``multiple_choice_head.summary``: the DoubleHeads model's scores."""
    cfg = Config.tiny()
    params = random_params(cfg, dtype)
    model = hf_model("OpenAIGPTDoubleHeadsModel", params, cfg, dtype, tmp_path)
    tokens = tokens_for(cfg, (2, 3, 12), seed=2) % cfg.n_vocab  # no clf token but the one below
    clf_at = torch.tensor([[11, 7, 4], [9, 11, 2]])
    tokens.scatter_(-1, clf_at[..., None], cfg.clf_token)
    with torch.no_grad():
        theirs = model(tokens, mc_token_ids=clf_at).mc_logits
        ours = heads.multiple_choice_logits(params, tokens, cfg=cfg)
    assert theirs.shape == ours.shape == (2, 3)
    assert max_diff(ours, theirs) <= TOLERANCE[dtype]
