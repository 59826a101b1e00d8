"""The padding-free path (gpt1f.packing) against the padded computation: values, gradients,
dropout masks, a train step, compile (and its recompiles) and the vmap fallback."""
import functools

import pytest
import torch

import gpt1f
from gpt1f import packing
from gpt1f import random as grandom
from gpt1f.heads import HEADS, read_lengths
from gpt1f.optim import openai_adam
from gpt1f.train import make_train_step, train_step

CFG = gpt1f.Config.tiny()            # every dropout rate 0.1
F64 = torch.float64
TIGHT = dict(rtol=0, atol=1e-12)


def make_params(dtype=F64, n_class=1, seed=0):
    params = gpt1f.init_params(CFG, seed=seed, dtype=dtype, n_class=n_class)
    gen = torch.Generator().manual_seed(seed + 1)
    return {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=F64).to(dtype) if v.ndim == 1 else v
            for k, v in params.items()}


def make_batch(shape=(3, 2), t=12, seed=0, dtype=F64, min_len=3, n_labels=2):
    """Rows ``_start_, tokens, _classify_`` then padding (token 0, mask 0), lengths min_len .. t."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, t + 1, shape, generator=gen)
    ar = torch.arange(t)
    real = ar < lengths[..., None]
    tokens = torch.randint(0, CFG.n_vocab, (*shape, t), generator=gen) * real
    tokens = torch.where(ar == lengths[..., None] - 1, CFG.clf_token, tokens)
    tokens[..., 0] = CFG.n_vocab
    label = torch.randint(0, n_labels, shape[:1], generator=gen)
    return {"tokens": tokens, "mask": real.to(dtype), "label": label}, lengths


def real_positions(lengths, t):
    return torch.arange(t) < lengths[..., None]


def test_real_lengths_reach_the_first_classify_token_and_the_last_masked_position():
    tokens = torch.tensor([[1, 2, CFG.clf_token, 0, 0, 0],       # clf at 2
                           [1, CFG.clf_token, 4, CFG.clf_token, 0, 0],   # first clf at 1
                           [1, 2, 3, 4, 5, 6]])                  # no clf: TF's argmax reads 0
    mask = torch.tensor([[1., 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0]])
    assert packing.real_lengths(tokens, CFG.clf_token).tolist() == [3, 2, 1]
    assert packing.real_lengths(tokens, CFG.clf_token, mask).tolist() == [3, 4, 4]


def test_plan_gathers_and_scatters_the_real_tokens_of_each_row():
    lengths = torch.tensor([2, 4, 1])
    p = packing.plan(lengths, 4)
    assert p.index.tolist() == [0, 1, 4, 5, 6, 7, 8]
    x = torch.arange(3 * 4 * 2.).view(3, 4, 2)
    packed = packing.gather(x, p)
    assert torch.equal(packed, x.view(12, 2)[[0, 1, 4, 5, 6, 7, 8]])
    back = packing.scatter(packed, p)
    real = real_positions(lengths, 4)
    assert torch.equal(back[real], x[real]) and not back[~real].any()
    assert packing.positions(p).tolist() == [0, 1, 0, 1, 2, 3, 0]


def test_dropout_at_padded_counters_draws_the_padded_masks_bit_for_bit():
    batch, lengths = make_batch()
    x = torch.randn(6, 12, 8, dtype=F64)
    key = grandom.key(7)
    p = packing.plan(lengths, 12)
    padded = grandom.dropout(x, 0.3, key=key, train=True)
    packed = grandom.dropout(packing.gather(x, p), 0.3, key=key, train=True,
                             counters=packing.element_counters(p, 8))
    assert torch.equal(packed, packing.gather(padded, p))
    assert (packed == 0).any()


def test_hidden_states_at_real_positions_equal_the_padded_ones_and_padding_is_zero():
    params = make_params()
    batch, lengths = make_batch()
    key = grandom.key(3)
    for train in (False, True):
        padded = gpt1f.transformer(params, batch["tokens"], cfg=CFG, key=key, train=train)
        packed = gpt1f.transformer(params, batch["tokens"], cfg=CFG, key=key, train=train, lengths=lengths)
        real = real_positions(lengths, 12)
        torch.testing.assert_close(packed[real], padded[real], **TIGHT)
        assert not packed[~real].any()
        assert (padded[~real] != 0).any()              # the padded path did compute the padding


HEAD_CASES = {"multiple_choice": dict(shape=(3, 2)), "classify": dict(shape=(4,), n_labels=3),
              "similarity": dict(shape=(3, 2))}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("train", [False, True])
def test_every_head_output_equals_the_padded_computation(head, train):
    n_class = 3 if head == "classify" else 1
    params = make_params(n_class=n_class)
    case = HEAD_CASES[head]
    batch, _ = make_batch(case["shape"], n_labels=case.get("n_labels", 2))
    if head == "similarity":
        batch["label"] = batch["label"].to(F64)
    fn = getattr(gpt1f, head)
    key = grandom.key(1)
    padded = fn(params, batch, cfg=CFG, key=key, train=train, packed=False)
    packed = fn(params, batch, cfg=CFG, key=key, train=train, packed=True)
    for a, b in zip(packed, padded):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("fused_lm", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_loss_and_every_gradient_equal_the_padded_computation(fused_lm, train):
    params = make_params()
    batch, _ = make_batch()
    key = grandom.key(5)
    grad = torch.func.grad_and_value(gpt1f.loss_fn)
    kw = dict(cfg=CFG, key=key, train=train, fused_lm=fused_lm)
    (g_pad, l_pad), (g_pack, l_pack) = grad(params, batch, packed=False, **kw), grad(params, batch, **kw)
    torch.testing.assert_close(l_pack, l_pad, **TIGHT)
    assert g_pack.keys() == params.keys()
    for name in params:
        torch.testing.assert_close(g_pack[name], g_pad[name], **TIGHT, msg=name)


def test_a_train_step_with_dropout_gives_the_padded_step_parameters():
    params = make_params()
    batch, _ = make_batch(seed=4)
    opt = openai_adam(lr=1e-3, schedule="warmup_constant", warmup=0.0, t_total=10)
    key = grandom.key(11)
    results = [train_step(dict(params), opt.init(params), batch, key, cfg=CFG, opt=opt, packed=packed)
               for packed in (False, True)]
    (p_pad, _, m_pad), (p_pack, _, m_pack) = results
    for name in params:
        torch.testing.assert_close(p_pack[name], p_pad[name], **TIGHT, msg=name)
    for name in m_pad:
        torch.testing.assert_close(m_pack[name], m_pad[name], **TIGHT, msg=name)
    assert not torch.equal(p_pack["model/h0/mlp/c_fc/w:0"], params["model/h0/mlp/c_fc/w:0"])


def test_multiple_choice_logits_read_the_real_tokens_only():
    params = make_params()
    batch, _ = make_batch(seed=2)
    padded = gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=CFG, packed=False)
    packed = gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=CFG)
    torch.testing.assert_close(packed, padded, **TIGHT)
    # what follows the _classify_ token cannot change a score
    noisy = torch.where(batch["mask"] == 0, torch.randint_like(batch["tokens"], CFG.n_vocab), batch["tokens"])
    torch.testing.assert_close(gpt1f.multiple_choice_logits(params, noisy, cfg=CFG), packed, **TIGHT)


def test_the_default_packs_on_cpu_and_a_users_task_or_vmap_gets_the_padded_path():
    batch, lengths = make_batch()
    lengths_read = read_lengths(HEADS["multiple_choice"], batch, cfg=CFG, packed=None)
    assert torch.equal(lengths_read, lengths)
    assert read_lengths(HEADS["multiple_choice"], batch, cfg=CFG, packed=False) is None
    own_task = functools.partial(HEADS["multiple_choice"])
    assert read_lengths(own_task, batch, cfg=CFG, packed=True) is None
    seen = []
    torch.func.vmap(lambda t: seen.append(packing.can_pack(t)) or t.sum())(batch["tokens"])
    assert seen == [False] and packing.can_pack(batch["tokens"])


def test_per_example_gradients_under_vmap_equal_a_loop_of_packed_losses():
    params = make_params()
    batch, _ = make_batch(shape=(3, 2), seed=6)
    key = grandom.key(2)
    loss = functools.partial(gpt1f.loss_fn, cfg=CFG, train=True)
    per_example = gpt1f.per_example_grads(loss, params, batch, key)   # vmap: the padded path
    keys = grandom.split(key, 3)
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        looped = torch.func.grad(loss)(params, one, key=keys[i])      # packed
        for name in params:
            torch.testing.assert_close(per_example[name][i], looped[name], **TIGHT, msg=name)


def test_compiled_packed_step_equals_eager_and_does_not_recompile_for_new_real_lengths():
    """Six batches of at least four different numbers of real tokens: one graph."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    params = make_params(torch.float32)
    opt = openai_adam(lr=1e-3, schedule="warmup_constant", warmup=0.0, t_total=10)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = make_train_step(CFG, opt, compile=True, backend=counter)
    eager = make_train_step(CFG, opt)
    state = opt.init(params)
    n_real = set()
    for i in range(6):
        batch, lengths = make_batch(seed=10 + i, dtype=torch.float32, min_len=2)
        n_real.add(int(lengths.sum()))
        key = grandom.key(i)
        p_c, _, m_c = compiled(dict(params), state, batch, key)
        p_e, _, m_e = eager(dict(params), state, batch, key)
        torch.testing.assert_close(m_c["loss"], m_e["loss"], rtol=1e-5, atol=1e-6)
        for name in params:
            if name == "model/clf/b:0":   # gradient 0 by symmetry: Adam scales the compiled
                # graph's other rounding (gelu's sigmoid form) to at most lr
                assert (p_c[name] - params[name]).abs().max() <= 1e-3 * (1 + 1e-6)
                continue
            torch.testing.assert_close(p_c[name], p_e[name], rtol=1e-5, atol=1e-6)
    assert len(n_real) >= 4
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for {len(n_real)} real lengths"


def test_inductor_compiled_packed_scores_equal_eager():
    torch._dynamo.reset()
    params = make_params(torch.float32)
    score = packing.compile_packed(functools.partial(gpt1f.multiple_choice_logits, cfg=CFG),
                                   fullgraph=True)
    for seed in (0, 1):
        batch, _ = make_batch(seed=seed, dtype=torch.float32)
        torch.testing.assert_close(score(params, batch["tokens"]),
                                   gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=CFG),
                                   rtol=1e-5, atol=1e-6)


def test_compiling_without_dynamic_output_shapes_falls_back_to_the_padded_path():
    torch._dynamo.reset()
    params = make_params(torch.float32)
    batch, _ = make_batch(dtype=torch.float32)
    fn = torch.compile(functools.partial(gpt1f.multiple_choice_logits, cfg=CFG), fullgraph=True,
                       backend="eager")
    torch.testing.assert_close(fn(params, batch["tokens"]),
                               gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=CFG),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")
def test_cuda_packed_step_equals_padded_eager_and_compiled():
    params = {k: v.cuda() for k, v in make_params(torch.float32).items()}
    batch, _ = make_batch(dtype=torch.float32)
    batch = {k: v.cuda() for k, v in batch.items()}
    opt = openai_adam(lr=1e-3, schedule="warmup_constant", warmup=0.0, t_total=10)
    key = grandom.key(0, device="cuda")
    torch._dynamo.reset()
    runs = {name: make_train_step(CFG, opt, packed=packed, compile=compile)(
                dict(params), opt.init(params), batch, key)
            for name, packed, compile in (("padded", False, False), ("packed", True, False),
                                          ("packed_compiled", True, True))}
    for name in ("packed", "packed_compiled"):
        for k in params:
            torch.testing.assert_close(runs[name][0][k], runs["padded"][0][k], rtol=1e-4, atol=1e-6, msg=k)
