"""The KV-cache forward, generate and score on tiny models: exactness, sampling, compile, bad input."""
import math

import pytest
import torch

import gpt1f
from gpt1f import random as grandom
from gpt1f import sampling
from gpt1f.cache import forward_cached, forward_cached_, init_cache

CFG = gpt1f.Config.tiny()            # n_vocab 50, n_special 3, n_ctx 16, 32 wide, 2 layers
LONG = gpt1f.Config.tiny(n_ctx=40)   # room for a prompt and 20 new tokens


def params_of(cfg, dtype=torch.float32, seed=0):
    return gpt1f.init_params(cfg, seed=seed, dtype=dtype)


def prompts_of(lengths, cfg=CFG, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.n_vocab, (n,), generator=gen).tolist() for n in lengths]


# ---------------------------------------------------------------------------------------------
# The cached forward against the uncached transformer


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cached_equals_uncached_at_every_position(dtype, tol):
    """Prefill a prompt of every length 1 .. n_ctx, then decode one token at a time to n_ctx:
    hidden states and token-row logits equal ``transformer`` on the whole sequence."""
    params = params_of(CFG, dtype)
    tokens = torch.randint(0, CFG.n_vocab, (3, CFG.n_ctx), generator=torch.Generator().manual_seed(1))
    hidden = gpt1f.transformer(params, tokens, cfg=CFG)
    logits = gpt1f.lm_logits(params, hidden, cfg=CFG)[..., :CFG.n_vocab]
    for length in range(1, CFG.n_ctx + 1):
        cache = init_cache(CFG, 3, CFG.n_ctx, dtype=dtype)
        h, cache = forward_cached(params, tokens[:, :length], cache, torch.tensor(0), cfg=CFG)
        steps = [h]
        for t in range(length, CFG.n_ctx):
            h, cache = forward_cached(params, tokens[:, t:t + 1], cache, torch.tensor([t] * 3), cfg=CFG)
            steps.append(h)
        cached = torch.cat(steps, dim=1)
        assert (cached - hidden).abs().max() <= tol, length
        got = sampling.choice_logits(params, cached, cfg=CFG)
        assert (got - logits).abs().max() <= tol * 10, length


def test_prefill_in_chunks_equals_one_call():
    """T_new > 1 at a later position (chunked prefill) sees the earlier chunks through the cache."""
    params = params_of(CFG, torch.float64)
    tokens = torch.randint(0, CFG.n_vocab, (2, 12), generator=torch.Generator().manual_seed(2))
    whole = gpt1f.transformer(params, tokens, cfg=CFG)
    cache = init_cache(CFG, 2, CFG.n_ctx, dtype=torch.float64)
    chunks = []
    for start in range(0, 12, 5):
        h, cache = forward_cached(params, tokens[:, start:start + 5], cache, torch.tensor(start), cfg=CFG)
        chunks.append(h)
    torch.testing.assert_close(torch.cat(chunks, 1), whole, rtol=0, atol=1e-12)


def test_pure_forward_leaves_the_cache_and_inplace_writes_it():
    params = params_of(CFG)
    tokens = torch.randint(0, CFG.n_vocab, (2, 5))
    cache = init_cache(CFG, 2, 8)
    before = {k: v.clone() for k, v in cache.items()}
    h_pure, new = forward_cached(params, tokens, cache, torch.tensor(0), cfg=CFG)
    assert all(torch.equal(cache[k], before[k]) for k in cache)
    assert not torch.equal(new["h1/v"], before["h1/v"])
    h_inplace, same = forward_cached_(params, tokens, cache, torch.tensor(0), cfg=CFG)
    assert all(same[k] is cache[k] for k in cache)
    assert torch.equal(h_pure, h_inplace)
    assert all(torch.equal(cache[k], new[k]) for k in cache)
    assert (cache["h0/k"][:, :, 5:] == 0).all()                  # nothing beyond the 5 written


def test_ragged_rows_equal_rows_alone_in_the_cached_forward():
    """Per-row positions: rows at different positions in one call equal each row run alone."""
    params = params_of(CFG, torch.float64)
    lengths = [3, 7, 1]
    prompts = prompts_of(lengths)
    padded = torch.tensor([p + [0] * (7 - len(p)) for p in prompts])
    cache = init_cache(CFG, 3, CFG.n_ctx, dtype=torch.float64)
    _, cache = forward_cached_(params, padded, cache, torch.tensor(0), cfg=CFG)
    nxt = torch.tensor([[5], [6], [7]])
    h, _ = forward_cached_(params, nxt, cache, torch.tensor(lengths), cfg=CFG)
    for b, prompt in enumerate(prompts):
        alone = gpt1f.transformer(params, torch.tensor([prompt + [int(nxt[b])]]), cfg=CFG)
        torch.testing.assert_close(h[b, 0], alone[0, -1], rtol=0, atol=1e-12)


def test_ragged_batches_generate_what_each_row_generates_alone():
    params = params_of(LONG, torch.float64)
    prompts = prompts_of([1, 6, 3, 9], LONG)
    keys = grandom.split(grandom.key(7), 4)
    for kw in (dict(greedy=True), dict(temperature=0.8, top_k=20), dict(top_p=0.9)):
        together = gpt1f.generate(params, prompts, cfg=LONG, key=keys, max_new_tokens=12, **kw)
        for b, prompt in enumerate(prompts):
            alone = gpt1f.generate(params, [prompt], cfg=LONG, key=keys[b:b + 1],
                                   max_new_tokens=12, **kw)
            assert together[b] == alone[0], (kw, b)
    one_key = gpt1f.generate(params, prompts, cfg=LONG, key=grandom.key(7), max_new_tokens=5)
    assert one_key == gpt1f.generate(params, prompts, cfg=LONG, key=keys, max_new_tokens=5)


# ---------------------------------------------------------------------------------------------
# Greedy against transformers


@pytest.mark.parametrize("allow_special", [True, False])
def test_greedy_equals_transformers_generate(tmp_path, allow_special):
    """20 greedy tokens equal ``OpenAIGPTLMHeadModel.generate(do_sample=False)`` on the same
    weights (save_hf, from_pretrained). transformers' head covers tokens and special rows:
    with ``allow_special`` both sides may pick a special row; without it the peer suppresses
    them (``suppress_tokens``). Two special rows are inflated so that they would win."""
    from transformers import OpenAIGPTLMHeadModel

    params = params_of(LONG, torch.float64, seed=3)
    we = params["model/we:0"]
    we[LONG.n_vocab:LONG.pos_offset - 1] *= 8.0
    gpt1f.save_hf(params, tmp_path, cfg=LONG)
    model = OpenAIGPTLMHeadModel.from_pretrained(tmp_path).double().eval()
    prompts = prompts_of([5, 5], LONG, seed=4)
    ours = gpt1f.generate(params, prompts, cfg=LONG, max_new_tokens=20, greedy=True,
                          allow_special=allow_special)
    specials = list(range(LONG.n_vocab, LONG.pos_offset))
    extra = {} if allow_special else {"suppress_tokens": specials}
    with torch.no_grad():
        theirs = model.generate(torch.tensor(prompts), do_sample=False, max_new_tokens=20,
                                min_new_tokens=20, pad_token_id=0, eos_token_id=None, **extra)
    assert ours == theirs[:, 5:].tolist()
    drew_special = any(t >= LONG.n_vocab for row in ours for t in row)
    assert drew_special == allow_special


# ---------------------------------------------------------------------------------------------
# Sampling


def test_same_key_same_tokens_different_keys_different_tokens():
    params = params_of(LONG)
    prompts = prompts_of([4, 2], LONG)
    a = gpt1f.generate(params, prompts, cfg=LONG, key=grandom.key(0), max_new_tokens=20)
    b = gpt1f.generate(params, prompts, cfg=LONG, key=grandom.key(0), max_new_tokens=20)
    c = gpt1f.generate(params, prompts, cfg=LONG, key=grandom.key(1), max_new_tokens=20)
    assert a == b and a != c
    assert a[0] != a[1]                                   # rows draw from their own keys


def test_position_rows_are_never_drawn_and_special_rows_only_when_allowed():
    """Position and special rows inflated to dominate every logit; 16,000 draws at temperature
    100 (nearly uniform over what may be drawn) stay inside the token rows."""
    params = params_of(CFG)
    params["model/we:0"][CFG.n_vocab:] *= 50.0
    prompts = [[1, 2]] * 2000
    rows = gpt1f.generate(params, prompts, cfg=CFG, key=grandom.key(0), max_new_tokens=8,
                          temperature=100.0)
    drawn = torch.tensor(rows)
    assert drawn.max() < CFG.n_vocab and drawn.min() >= 0
    assert len(drawn.unique()) == CFG.n_vocab                   # every token row does come up
    special = torch.tensor(gpt1f.generate(params, prompts[:200], cfg=CFG, key=grandom.key(0),
                                          max_new_tokens=8, temperature=100.0, allow_special=True))
    assert special.max() < CFG.pos_offset and (special >= CFG.n_vocab).any()


def draws(logits, n, **kw):
    """``n`` draws from one row of logits, each from its own key."""
    keys = grandom.split(grandom.key(11), n)
    return sampling.next_tokens(logits.expand(n, -1), keys, greedy=False,
                                temperature=torch.tensor(kw.pop("temperature", 1.0)), **kw)


def test_top_k_never_leaves_the_k_best():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    best = set(torch.topk(logits[0], 5).indices.tolist())
    got = draws(logits, 5000, temperature=3.0, top_k=5, top_p=None)
    assert set(got.tolist()) == best
    assert sampling.keep_top_k(logits, 5).isfinite().sum() == 5


def test_top_p_keeps_the_smallest_set_reaching_p():
    gen = torch.Generator().manual_seed(1)
    for trial in range(20):
        logits = torch.randn(1, 50, generator=gen, dtype=torch.float64) * 2
        p = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
        probs = torch.softmax(logits[0], -1)
        order = torch.argsort(probs, descending=True).tolist()
        mass, expected = 0.0, set()
        for i in order:                                    # most likely first, until mass >= p
            expected.add(i)
            mass += float(probs[i])
            if mass >= p:
                break
        kept = sampling.keep_top_p(logits, torch.tensor(p)).isfinite()[0]
        assert set(kept.nonzero()[:, 0].tolist()) == expected, trial
    got = draws(logits, 3000, top_k=None, top_p=torch.tensor(p))
    assert set(got.tolist()) <= expected


def chi_square_limit(df: int, z: float = 3.72) -> float:
    """The chi-square quantile at ``1 - 1e-4`` (z = 3.72) by Wilson-Hilferty's approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_draws_follow_softmax_of_logits_over_temperature():
    """8,000 first tokens of generate, one key per row, against ``softmax(logits / T)`` of the
    uncached model over the token rows: chi-square below its 1 - 1e-4 quantile, TV below 0.03."""
    params = params_of(CFG, seed=5)
    params["model/we:0"][:CFG.n_vocab] *= 6.0                  # a peaked, not uniform, distribution
    prompt, n, temperature = [3, 14, 15], 8000, 0.7
    rows = gpt1f.generate(params, [prompt] * n, cfg=CFG, key=grandom.key(2), max_new_tokens=1,
                          temperature=temperature)
    counts = torch.bincount(torch.tensor([r[0] for r in rows]), minlength=CFG.n_vocab).double()
    hidden = gpt1f.transformer(params, torch.tensor([prompt]), cfg=CFG)
    logits = gpt1f.lm_logits(params, hidden, cfg=CFG)[0, -1, :CFG.n_vocab].double()
    expected = torch.softmax(logits / temperature, -1)
    assert expected.max() > 0.1                                 # the test is not against uniform
    frequent = expected * n >= 5                                # pool the rare cells into one
    observed = torch.cat([counts[frequent], counts[~frequent].sum()[None]])
    wanted = torch.cat([expected[frequent], expected[~frequent].sum()[None]]) * n
    chi2 = float(((observed - wanted) ** 2 / wanted).sum())
    assert chi2 < chi_square_limit(len(observed) - 1), chi2
    tv = 0.5 * float((counts / n - expected).abs().sum())
    assert tv < 0.03, tv


def test_gumbel_noise_is_a_pure_function_of_the_key():
    keys = grandom.split(grandom.key(3), 4)
    g = grandom.gumbel(keys[:, None], (1000,))
    assert torch.equal(g[2], grandom.gumbel(keys[2], (1000,)))
    assert torch.isfinite(g).all() and not torch.equal(g[0], g[1])
    assert abs(float(g.mean()) - 0.5772) < 0.05                  # Euler-Mascheroni: Gumbel's mean
    compiled = torch.compile(lambda k: grandom.gumbel(k[:, None], (1000,)), fullgraph=True,
                             backend="aot_eager")
    assert torch.equal(compiled(keys), g)
    vmapped = torch.func.vmap(lambda k: grandom.gumbel(k, (1000,)))(keys)
    assert torch.equal(vmapped, g)


# ---------------------------------------------------------------------------------------------
# Stop tokens, lengths, compile


def test_stop_tokens_end_a_row_after_the_first_one():
    params = params_of(LONG)
    prompts = prompts_of([3, 5, 2], LONG)
    full = gpt1f.generate(params, prompts, cfg=LONG, key=grandom.key(4), max_new_tokens=20)
    stop = full[0][6]
    cut = gpt1f.generate(params, prompts, cfg=LONG, key=grandom.key(4), max_new_tokens=20,
                         stop_tokens=[stop])
    for row, whole in zip(cut, full):
        end = whole.index(stop) + 1 if stop in whole else len(whole)
        assert row == whole[:end]
    assert cut[0][-1] == stop and len(cut[0]) <= 7
    assert gpt1f.generate(params, prompts, cfg=LONG, key=grandom.key(4), max_new_tokens=0) == [[]] * 3


def test_decode_step_compiles_once_and_equals_eager():
    """A 20-token run compiles the decode step once (inductor); another batch of the same shape,
    other prompts and keys, reuses it; compiled tokens equal eager ones."""
    from torch._dynamo.testing import CompileCounterWithBackend

    params = params_of(LONG)
    counter = CompileCounterWithBackend("inductor")
    torch._dynamo.reset()
    runs = [(prompts_of([4, 7], LONG, seed=s), grandom.key(s)) for s in (0, 1)]
    for prompts, key in runs:
        kw = dict(cfg=LONG, key=key, max_new_tokens=20, top_k=10, top_p=0.95)
        compiled = gpt1f.generate(params, prompts, compile=True,
                                  compile_options={"backend": counter}, **kw)
        assert compiled == gpt1f.generate(params, prompts, **kw)
    assert counter.frame_count == 1, f"{counter.frame_count} compilations"


def test_cache_length_is_bucketed_so_prompt_lengths_share_a_compiled_step():
    from gpt1f.generation import cache_length

    cfg = gpt1f.Config.gpt1()
    assert cache_length(64 + 256, cfg) == 320 and cache_length(65, cfg) == 128
    assert cache_length(500, cfg) == 512 and cache_length(5, CFG) == 16


# ---------------------------------------------------------------------------------------------
# score


def test_score_equals_log_softmax_over_token_rows_and_transformers_loss(tmp_path):
    from transformers import OpenAIGPTLMHeadModel

    params = params_of(CFG, torch.float64, seed=2)
    tokens = torch.randint(0, CFG.n_vocab, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9)
    mask[1, 6:] = 0
    token_lp, seq_lp = gpt1f.score(params, tokens, mask, cfg=CFG)
    assert token_lp.shape == (3, 8) and seq_lp.shape == (3,)
    logits = gpt1f.lm_logits(params, gpt1f.transformer(params, tokens, cfg=CFG), cfg=CFG)
    ref = torch.log_softmax(logits[:, :-1, :CFG.n_vocab], -1).gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(token_lp, ref * mask[:, 1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(seq_lp, token_lp.sum(-1), rtol=0, atol=1e-12)
    assert (token_lp[1, 5:] == 0).all()
    # with the special rows the softmax is transformers' LM head: its per-token loss
    gpt1f.save_hf(params, tmp_path, cfg=CFG)
    model = OpenAIGPTLMHeadModel.from_pretrained(tmp_path).double().eval()
    with torch.no_grad():
        hf_logits = model(tokens).logits
    hf_lp = torch.log_softmax(hf_logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
    with_special, _ = gpt1f.score(params, tokens, torch.ones(3, 9), cfg=CFG, allow_special=True)
    torch.testing.assert_close(with_special, hf_lp, rtol=0, atol=1e-10)


def test_score_batches_choices_like_the_model():
    """[batch, choices, T] inputs (Story Cloze: two endings per story) score like each alone."""
    params = params_of(CFG, torch.float64)
    tokens = torch.randint(0, CFG.n_vocab, (2, 2, 7))
    mask = torch.ones(2, 2, 7)
    token_lp, seq_lp = gpt1f.score(params, tokens, mask, cfg=CFG)
    assert token_lp.shape == (2, 2, 6) and seq_lp.shape == (2, 2)
    alone = gpt1f.score(params, tokens[1, 0][None], mask[1, 0][None], cfg=CFG)[1]
    torch.testing.assert_close(seq_lp[1, 0], alone[0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad input


def bad_generate(**changes):
    params = params_of(CFG)
    kw = dict(cfg=CFG, key=grandom.key(0), max_new_tokens=4)
    prompts = changes.pop("prompts", [[1, 2, 3]])
    gpt1f.generate(params, prompts, **{**kw, **changes})


@pytest.mark.parametrize("changes, message", [
    (dict(prompts=[[1, 2], []]), r"prompts\[1\] is empty"),
    (dict(prompts=[]), "prompts must be a non-empty list"),
    (dict(prompts=[[1, CFG.n_vocab]]), r"prompts\[0\]\[1\] = 50 is outside the token rows"),
    (dict(prompts=[[CFG.pos_offset + 2]]), r"prompts\[0\]\[0\] = 55 is outside"),
    (dict(prompts=[[-1]]), r"prompts\[0\]\[0\] = -1"),
    (dict(temperature=0.0), "temperature=0.0 must be > 0"),
    (dict(temperature=-1.0), "temperature=-1.0 must be > 0"),
    (dict(top_k=0), "top_k must be None or an int >= 1"),
    (dict(top_p=0.0), r"top_p must be None or lie in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be None or lie in \(0, 1\]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
    (dict(prompts=[[1] * 10], max_new_tokens=7), r"prompts\[0\] has 10 tokens .* 6 new tokens fit"),
    (dict(key=None), "key is required for sampling"),
    (dict(key=grandom.split(grandom.key(0), 3)), r"key must be .*shape \[1\]"),
    (dict(stop_tokens=[60]), r"stop_tokens\[0\] = 60"),
])
def test_generate_rejects_bad_input_naming_the_argument(changes, message):
    with pytest.raises(ValueError, match=message):
        bad_generate(**changes)


def test_greedy_needs_no_key_and_ignores_temperature():
    params = params_of(CFG)
    a = gpt1f.generate(params, [[1, 2]], cfg=CFG, max_new_tokens=4, greedy=True, temperature=0.0)
    assert a == gpt1f.generate(params, [[1, 2]], cfg=CFG, max_new_tokens=4, greedy=True)
    assert gpt1f.generate(params, [[1, 2] * 8], cfg=CFG, max_new_tokens=0, greedy=True) == [[]]


def test_special_prompt_ids_need_allow_special():
    params = params_of(CFG)
    with pytest.raises(ValueError, match="allow_special=True"):
        gpt1f.generate(params, [[CFG.n_vocab]], cfg=CFG, max_new_tokens=2, greedy=True)
    assert len(gpt1f.generate(params, [[CFG.n_vocab]], cfg=CFG, max_new_tokens=2, greedy=True,
                              allow_special=True)[0]) == 2


@pytest.mark.parametrize("make, message", [
    (lambda: init_cache(CFG, 3, 8), r"cache\['h0/k'\] has shape \[3, 4, 8, 8\], expected \[2, 4"),
    (lambda: init_cache(CFG.replace(n_layer=1), 2, 8), "cache must hold 'h{i}/k' and 'h{i}/v' for the 2"),
    (lambda: {**init_cache(CFG, 2, 8), "h1/v": torch.zeros(2, 4, 9, 8)}, r"cache\['h1/v'\] has shape"),
    (lambda: init_cache(CFG.replace(n_head=2), 2, 8), r"cache\['h0/k'\] has shape \[2, 2, 8, 16\]"),
])
def test_forward_cached_rejects_a_cache_of_the_wrong_shape(make, message):
    params = params_of(CFG)
    with pytest.raises(ValueError, match=message):
        forward_cached(params, torch.zeros(2, 1, dtype=torch.int64), make(), torch.tensor(0), cfg=CFG)


def test_cache_and_position_arguments_are_checked():
    params = params_of(CFG)
    with pytest.raises(ValueError, match="max_len=17 exceeds cfg.n_ctx=16"):
        init_cache(CFG, 1, 17)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        init_cache(CFG, 0, 4)
    cache = init_cache(CFG, 2, 4)
    with pytest.raises(ValueError, match=r"pos must be an integer tensor"):
        forward_cached(params, torch.zeros(2, 1, dtype=torch.int64), cache, 0, cfg=CFG)
    with pytest.raises(ValueError, match=r"pos must be .* \[2\]"):
        forward_cached(params, torch.zeros(2, 1, dtype=torch.int64), cache, torch.tensor([0, 1, 2]), cfg=CFG)
    with pytest.raises(ValueError, match="tokens has 5 new positions but the cache holds 4"):
        forward_cached(params, torch.zeros(2, 5, dtype=torch.int64), cache, torch.tensor(0), cfg=CFG)


def test_score_rejects_bad_input():
    params = params_of(CFG)
    tokens = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="mask must be a tensor of the tokens' shape"):
        gpt1f.score(params, tokens, torch.ones(1, 2), cfg=CFG)
    with pytest.raises(ValueError, match="outside 0 .. 52"):
        gpt1f.score(params, torch.tensor([[1, CFG.pos_offset]]), torch.ones(1, 2), cfg=CFG)
    special = torch.tensor([[1, CFG.n_vocab, 2]])
    with pytest.raises(ValueError, match="allow_special=True"):
        gpt1f.score(params, special, torch.ones(1, 3), cfg=CFG)
    lp, _ = gpt1f.score(params, special, torch.tensor([[1, 0, 1]]), cfg=CFG)   # context only: fine
    assert lp[0, 0] == 0 and lp[0, 1] < 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")
def test_cuda_graph_decode_step_equals_eager():
    """On a GPU: the step compiled with mode="reduce-overhead" (CUDA graphs, cache and params at
    fixed addresses) gives eager's tokens, sampled and greedy, over two calls."""
    params = {k: v.cuda() for k, v in params_of(LONG).items()}
    prompts = prompts_of([4, 7, 1], LONG)
    torch._dynamo.reset()
    for kw in (dict(key=grandom.key(0, device="cuda"), top_k=10), dict(greedy=True)):
        for _ in range(2):
            compiled = gpt1f.generate(params, prompts, cfg=LONG, max_new_tokens=20, compile=True, **kw)
            assert compiled == gpt1f.generate(params, prompts, cfg=LONG, max_new_tokens=20, **kw)
