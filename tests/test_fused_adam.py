"""The fused in-place OpenAI Adam (gpt1f.fused_adam) against the eager ``opt.update_``."""
import math

import pytest
import torch

import gpt1f
from gpt1f import fused_adam
from gpt1f.optim import openai_adam

CFG = gpt1f.Config.tiny()


def setup(dtype=torch.float64, seed=0):
    params = gpt1f.init_params(CFG, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    grads = [{k: (torch.randn(v.shape, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
              for k, v in params.items()} for _ in range(3)]
    return params, grads


def copies(params, opt):
    p = {k: v.clone() for k, v in params.items()}
    return p, opt.init(p)


def assert_states_equal(a, b, **tol):
    (p_a, s_a), (p_b, s_b) = a, b
    for name in p_a:
        torch.testing.assert_close(p_a[name], p_b[name], **tol, msg=name)
        torch.testing.assert_close(s_a.mu[name], s_b.mu[name], **tol, msg=name)
        torch.testing.assert_close(s_a.nu[name], s_b.nu[name], **tol, msg=name)
    assert int(s_a.count) == int(s_b.count) and int(s_a.skipped) == int(s_b.skipped)


def test_the_two_passes_run_eagerly_equal_update_bit_for_bit():
    """Same ops in the same order as ``_adam_foreach_``: equal, not close (decay, clipping)."""
    params, grads = setup()
    opt = openai_adam(lr=1e-2, t_total=10, max_grad_norm=0.05, l2=0.1)
    eager, fused = copies(params, opt), copies(params, opt)
    update_ = fused_adam.fused_update_(opt, compiled=False)
    for g in grads:
        opt.update_(g, eager[1], eager[0])
        update_(g, fused[1], fused[0])
    assert_states_equal(fused, eager, rtol=0, atol=0)
    assert int(fused[1].count) == 3


def test_compiled_passes_match_update_with_two_graphs_for_every_tensor_and_step():
    """aot_eager traces the passes as compiled code does; a new step count or lr recompiles nothing.
    Every tensor of size > 1 shares one graph per pass; size 1 (clf/b) has its own."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    params, grads = setup()
    opt = openai_adam(lr=1e-2, t_total=10, l2=0.1)
    counter = CompileCounterWithBackend("aot_eager")
    update_ = fused_adam.fused_update_(opt, backend=counter)
    eager, fused = copies(params, opt), copies(params, opt)
    frames = []
    for i, g in enumerate(grads):
        if i == 2:
            eager = (eager[0], eager[1]._replace(lr=torch.tensor(3e-3, dtype=torch.float64)))
            fused = (fused[0], fused[1]._replace(lr=torch.tensor(3e-3, dtype=torch.float64)))
        opt.update_(g, eager[1], eager[0])
        update_(g, fused[1], fused[0])
        frames.append(counter.frame_count)
    assert_states_equal(fused, eager, rtol=0, atol=1e-15)
    assert frames == frames[:1] * 3, f"recompiled: {frames}"
    assert sum("sqrt" in graph.code for graph in counter.graphs) == 4
    assert len(params) > 8                              # many tensors, few graphs


def test_inductor_passes_agree_with_update_to_float32_rounding():
    torch._dynamo.reset()
    params, grads = setup(torch.float32)
    opt = openai_adam(lr=1e-2, t_total=10)
    eager, fused = copies(params, opt), copies(params, opt)
    update_ = fused_adam.fused_update_(opt)
    for g in grads:
        opt.update_(g, eager[1], eager[0])
        update_(g, fused[1], fused[0])
    assert_states_equal(fused, eager, rtol=1e-5, atol=1e-7)


def test_non_finite_gradients_skip_the_update_and_leave_everything_as_update_does():
    params, grads = setup()
    opt = openai_adam(lr=1e-2, t_total=10)
    eager, fused = copies(params, opt), copies(params, opt)
    update_ = fused_adam.fused_update_(opt, compiled=False)
    opt.update_(grads[0], eager[1], eager[0])
    update_(grads[0], fused[1], fused[0])
    bad = {k: v.clone() for k, v in grads[1].items()}
    bad["model/h1/mlp/c_fc/w:0"][0, 3, 5] = math.nan
    before = {k: v.clone() for k, v in fused[0].items()}
    opt.update_(bad, eager[1], eager[0])
    update_(bad, fused[1], fused[0])
    assert_states_equal(fused, eager, rtol=0, atol=0)
    assert int(fused[1].skipped) == 1 and int(fused[1].count) == 1
    assert all(torch.equal(fused[0][k], before[k]) for k in before)


def test_an_update_that_would_overflow_keeps_the_parameters_as_update_does():
    """Each step moves a parameter by about lr (3e38); the second would overflow float32."""
    params, grads = setup(torch.float32)
    opt = openai_adam(lr=3e38, t_total=10, schedule="warmup_constant", warmup=0.0, max_grad_norm=0)
    eager, fused = copies(params, opt), copies(params, opt)
    update_ = fused_adam.fused_update_(opt, compiled=False)
    for _ in range(2):
        opt.update_(grads[0], eager[1], eager[0])
        update_(grads[0], fused[1], fused[0])
        if _ == 0:
            first = {k: v.clone() for k, v in fused[0].items()}
    assert_states_equal(fused, eager, rtol=0, atol=0)
    assert int(fused[1].skipped) == 1 and int(fused[1].count) == 1
    assert all(torch.equal(fused[0][k], first[k]) for k in first)
    assert all(torch.isfinite(p).all() for p in fused[0].values())


def test_raise_mode_names_the_tensor_before_touching_anything():
    params, grads = setup()
    opt = openai_adam(lr=1e-2, t_total=10, nonfinite="raise")
    p, s = copies(params, opt)
    bad = dict(grads[0], **{"model/clf/w:0": torch.full_like(grads[0]["model/clf/w:0"], math.inf)})
    with pytest.raises(FloatingPointError, match="model/clf/w:0"):
        fused_adam.fused_update_(opt, compiled=False)(bad, s, p)
    assert all(torch.equal(p[k], params[k]) for k in params) and int(s.count) == 0


def test_a_non_contiguous_parameter_is_refused_by_name_of_its_strides():
    params, grads = setup()
    opt = openai_adam(lr=1e-2, t_total=10)
    p, s = copies(params, opt)
    p["model/we:0"] = p["model/we:0"].T.contiguous().T             # [n_rows, E], column-major
    s = opt.init(p)
    with pytest.raises(ValueError, match="contiguous"):
        fused_adam.fused_update_(opt, compiled=False)(grads[0], s, p)
