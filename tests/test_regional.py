"""Regional compilation (gpt1f.regional): one compiled block for every layer in an eager step."""
import functools

import pytest
import torch

import gpt1f
from gpt1f import random as grandom
from gpt1f import regional, scratch
from gpt1f.layers import block
from gpt1f.optim import openai_adam
from gpt1f.train import make_train_step

from .test_packing import CFG, make_batch, make_params


def moving_opt():
    return openai_adam(lr=1e-3, schedule="warmup_constant", warmup=0.0, t_total=10)


def test_autograd_grad_and_value_equals_torch_func():
    params = make_params()
    batch, _ = make_batch()
    loss = functools.partial(gpt1f.loss_fn, cfg=CFG, key=grandom.key(0), train=True, fused_lm=True)
    g_func, v_func = torch.func.grad_and_value(loss)(params, batch)
    g_auto, v_auto = regional.autograd_grad_and_value(loss)(params, batch)
    torch.testing.assert_close(v_auto, v_func, rtol=0, atol=1e-13)
    assert not v_auto.requires_grad and g_auto.keys() == params.keys()
    for name in params:
        torch.testing.assert_close(g_auto[name], g_func[name], rtol=0, atol=1e-13, msg=name)


def test_using_block_routes_every_layer_and_is_undone_after():
    calls = []

    def counting_block(p, x, **kw):
        calls.append(x.shape)
        return block(p, x, **kw)
    params = make_params()
    batch, _ = make_batch()
    with regional.using_block(counting_block):
        inside = gpt1f.transformer(params, batch["tokens"], cfg=CFG)
    assert len(calls) == CFG.n_layer
    torch.testing.assert_close(gpt1f.transformer(params, batch["tokens"], cfg=CFG), inside, rtol=0, atol=0)
    assert len(calls) == CFG.n_layer and regional.current_block() is block


@pytest.mark.parametrize("keep_buffers", [False, True])
def test_regional_step_equals_eager_with_one_graph_per_region_for_every_layer_and_length(
        keep_buffers, monkeypatch):
    """aot_eager: the same ops as eager, so the two agree to float64 rounding. The first step
    compiles the block once for both layers (one graph holds a layer norm), the dropout of ``we``
    once for the forward and once for its in-place backward, and the fused optimizer's two passes
    once for every size (and once for size 1); later steps, with other real lengths, compile
    nothing. ``keep_buffers``: every step's dropped ``we``, LM logits and LM gradient in buffers
    of the steps before (``gpt1f.scratch``, as at 117M)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    monkeypatch.setattr(scratch, "MIN_BYTES", 0 if keep_buffers else scratch.MIN_BYTES)
    scratch.release()
    torch._dynamo.reset()
    params, opt = make_params(), moving_opt()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = make_train_step(CFG, opt, compile="regional", backend=counter, inplace=True)
    eager = make_train_step(CFG, opt, inplace=True)
    p_c, s_c = {k: v.clone() for k, v in params.items()}, opt.init(params)
    p_e, s_e = {k: v.clone() for k, v in params.items()}, opt.init(params)
    n_real, frames = set(), []
    for i in range(4):
        batch, lengths = make_batch(seed=20 + i, min_len=2)
        n_real.add(int(lengths.sum()))
        p_c, s_c, m_c = compiled(p_c, s_c, batch, grandom.key(i))
        p_e, s_e, m_e = eager(p_e, s_e, batch, grandom.key(i))
        frames.append(counter.frame_count)
        for name in m_e:
            torch.testing.assert_close(m_c[name], m_e[name], rtol=0, atol=1e-12, msg=name)
    for name in params:
        torch.testing.assert_close(p_c[name], p_e[name], rtol=0, atol=1e-12, msg=name)
        torch.testing.assert_close(s_c.mu[name], s_e.mu[name], rtol=0, atol=1e-12, msg=name)
    assert int(s_c.count) == 4
    assert len(n_real) >= 3
    assert bool(scratch._kept()) == keep_buffers
    assert frames == frames[:1] * 4, f"recompiled: {frames}"
    codes = [g.code for g in counter.graphs]
    assert sum("layer_norm" in c for c in codes) == 1
    assert sum(">> 16" in c and "layer_norm" not in c for c in codes) == 2    # we's dropout: forward, backward in place
    assert sum("sqrt" in c for c in codes) == 4   # moments_ and apply_: sizes >= 2, and clf/b's 1


def test_inductor_regional_step_matches_eager_in_float32():
    torch._dynamo.reset()
    params, opt = make_params(torch.float32), moving_opt()
    compiled = make_train_step(CFG, opt, compile="regional", inplace=True)
    eager = make_train_step(CFG, opt, inplace=True)
    p_c, s_c = {k: v.clone() for k, v in params.items()}, opt.init(params)
    p_e, s_e = {k: v.clone() for k, v in params.items()}, opt.init(params)
    for i in range(2):
        batch, _ = make_batch(seed=30 + i, dtype=torch.float32)
        _, _, m_c = compiled(p_c, s_c, batch, grandom.key(i))
        _, _, m_e = eager(p_e, s_e, batch, grandom.key(i))
        torch.testing.assert_close(m_c["loss"], m_e["loss"], rtol=1e-5, atol=1e-6)
    for name in params:
        if name == "model/clf/b:0":     # its gradient is 0 by symmetry: Adam scales rounding noise
            assert (p_c[name] - params[name]).abs().max() <= 2e-3 * (1 + 1e-6)   # to at most lr a step
            continue
        torch.testing.assert_close(p_c[name], p_e[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_compiled_block_saves_no_bool_mask_for_backward():
    """Inductor's CPU kernels write a bool tensor one element at a time, so the block's dropout
    masks must reach its backward as numbers or be drawn again there, never as a saved bool as
    large as the activations (``gpt1f.random._kept``)."""
    from gpt1f.packing import plan
    from gpt1f.params import scope
    torch._dynamo.reset()
    params = make_params(torch.float32)
    batch, lengths = make_batch(dtype=torch.float32)
    packing = plan(lengths, batch["tokens"].shape[-1])
    p = {k: v.requires_grad_() for k, v in scope(params, "model/h0/").items()}
    x = torch.randn(packing.index.numel(), CFG.n_embd, requires_grad=True)
    saved = []

    def note(t):
        saved.append((t.dtype, t.numel()))
        return t
    with torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
        y = regional.compiled_block()(p, x, cfg=CFG, key=grandom.key(0), train=True, packing=packing)
    assert len(saved) > 10 and any(n >= x.numel() for _, n in saved)     # the activations are seen
    assert [n for dtype, n in saved if dtype == torch.bool and n >= x.numel()] == []
    torch.autograd.grad(y.sum(), [x, *p.values()])


def test_make_train_step_rejects_an_unknown_compile_mode():
    with pytest.raises(ValueError, match="compile='blocks'"):
        make_train_step(CFG, moving_opt(), compile="blocks")
