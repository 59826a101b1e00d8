"""OpenAIAdam against a numpy transcription of TF's opt.adam; pure vs in-place; compile; bad input."""
import math

import numpy as np
import optree
import pytest
import torch

import gpt1f
from tests import tf_adam_reference
from gpt1f.optim import AdamState, clip_by_global_norm, global_norm, openai_adam

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# The reference: TF's opt.adam, line by line, in numpy float64 (tests/tf_adam_reference.py)


def tiny_params(dtype=F64, seed=0):
    """Config.tiny()'s TF-named pytree, gains and biases moved off 1 and 0."""
    params = gpt1f.init_params(gpt1f.Config.tiny(), seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    return {k: (v + 0.1 * torch.randn(v.shape, generator=gen, dtype=dtype)) if v.ndim == 1 else v
            for k, v in params.items()}


def grad_steps(params, n, *, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{k: scale * torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
             for k, p in params.items()} for _ in range(n)]


def assert_rel(actual: torch.Tensor, expected: np.ndarray, rel: float, what: str):
    err = np.abs(actual.numpy() - expected).max()
    assert err <= rel * np.abs(expected).max(), f"{what}: max error {err:.3g}"


@pytest.mark.parametrize("schedule", ["warmup_linear", "warmup_cosine", "warmup_constant"])
@pytest.mark.parametrize("vector_l2", [False, True])
@pytest.mark.parametrize("clip", ["active", "inactive", "off"])
def test_update_matches_numpy_transcription_of_tf_float64(schedule, vector_l2, clip):
    params = tiny_params()
    steps = grad_steps(params, 10, scale=0.003)  # global norm ~ 0.3 each step
    max_grad_norm = {"active": 0.1, "inactive": 1.0, "off": -1.0}[clip]
    hp = dict(lr=0.01, schedule=schedule, warmup=0.2, t_total=10, b1=0.9, b2=0.999, e=1e-8,
              l2=0.05, vector_l2=vector_l2, max_grad_norm=max_grad_norm)
    norms = [global_norm(g).item() for g in steps]
    assert (min(norms) > 0.1) if clip == "active" else (max(norms) < 1.0)

    opt = openai_adam(hp.pop("lr"), **hp)
    state, p = opt.init(params), params
    for g in steps:
        p, state = opt.update(g, state, p)
    ref_p, ref_m, ref_v = tf_adam_reference.adam({k: v.numpy() for k, v in params.items()},
                                  [{k: v.numpy() for k, v in g.items()} for g in steps],
                                  lr=0.01, **hp)
    assert state.count.item() == 10 and state.count.dtype == torch.int64
    for k in params:
        assert_rel(p[k], ref_p[k], 1e-12, f"param {k}")
        assert_rel(state.mu[k], ref_m[k], 1e-12, f"mu {k}")
        assert_rel(state.nu[k], ref_v[k], 1e-12, f"nu {k}")


def port_2018_adam(params, grad_steps, *, lr, warmup, t_total, b1, b2, e, l2, max_grad_norm,
                   per_tensor_clip: bool, decay_after_step: bool):
    """The 2018 PyTorch port's OpenAIAdam in numpy, with either of its two deviations from TF:
    each tensor clipped to ``max_grad_norm`` on its own, and the decay ``lr_scheduled * l2 * p``
    applied to the already updated ``p`` outside the bias correction."""
    p = dict(params)
    m = {k: np.zeros_like(x) for k, x in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for t, grads in enumerate(grad_steps, start=1):
        if per_tensor_clip:
            grads = {k: g * max_grad_norm / max(np.sqrt(np.sum(g * g)), max_grad_norm)
                     for k, g in grads.items()}
        else:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
            grads = {k: g * max_grad_norm / max(norm, max_grad_norm) for k, g in grads.items()}
        lr_scheduled = lr * tf_adam_reference.schedule("warmup_linear", t / t_total, warmup)
        step_size = lr_scheduled * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            decayed = p[k].ndim > 1 and l2 > 0
            if decay_after_step:
                p[k] = p[k] - step_size * m[k] / (np.sqrt(v[k]) + e)
                p[k] = p[k] - lr_scheduled * l2 * p[k] if decayed else p[k]
            else:
                p[k] = p[k] - step_size * (m[k] / (np.sqrt(v[k]) + e) + (l2 * p[k] if decayed else 0))
    return p


def test_the_2018_ports_deviations_would_fail_the_transcription():
    """Each of the port's two deviations moves the result far past the 1e-12 that gpt1f meets;
    without them the port's maths is the transcription's (same ``t + 1`` schedule reading)."""
    params = tiny_params()
    steps = grad_steps(params, 3, scale=0.01)
    hp = dict(lr=0.01, warmup=0.2, t_total=10, b1=0.9, b2=0.999, e=1e-8, l2=0.05,
              max_grad_norm=0.1)
    norms = [global_norm(g).item() for g in steps]
    assert min(norms) > 0.2       # the global clip is active: per-tensor clipping differs from it
    as_np = lambda tree: {k: x.numpy() for k, x in tree.items()}   # noqa: E731
    ref, _, _ = tf_adam_reference.adam(as_np(params), [as_np(g) for g in steps],
                                       schedule="warmup_linear", vector_l2=False, **hp)
    opt = openai_adam(hp.pop("lr"), schedule="warmup_linear", **hp)
    ours, state = params, opt.init(params)
    for g in steps:
        ours, state = opt.update(g, state, ours)
    rel = lambda a: max(np.abs(a[k] - ref[k]).max() / np.abs(ref[k]).max() for k in ref)  # noqa: E731
    assert rel(as_np(ours)) <= 1e-12
    faithful = port_2018_adam(as_np(params), [as_np(g) for g in steps], lr=0.01, **hp,
                              per_tensor_clip=False, decay_after_step=False)
    assert rel(faithful) <= 1e-12
    for deviation in ("per_tensor_clip", "decay_after_step"):
        flags = {"per_tensor_clip": False, "decay_after_step": False, deviation: True}
        port = port_2018_adam(as_np(params), [as_np(g) for g in steps], lr=0.01, **hp, **flags)
        assert rel(port) > 1e-6, deviation


def test_schedule_sees_the_incremented_count_as_tf_does_when_run():
    """TF's opt.adam run in graph mode (one variable p = 1, constant gradient 0.1, lr 1,
    warmup_linear with warmup 0.2, t_total 10, no clipping, l2 0) moved p by 0.45, 0.8, 0.7 in its
    first three updates whenever its increment ran before its schedule read: warmup_linear at
    0.1, 0.2, 0.3, the bias-corrected m / sqrt(v) being 1 for a constant gradient."""
    opt = openai_adam(1.0, schedule="warmup_linear", warmup=0.2, t_total=10, l2=0.0,
                      max_grad_norm=-1.0)
    p = {"p": torch.tensor(1.0, dtype=F64)}
    state = opt.init(p)
    expected_rates = [0.1 / 0.2 * (1 - 0.1), 1.0 * (1 - 0.2), 1 - 0.3]
    for rate in expected_rates:
        assert opt.learning_rate(state).item() == pytest.approx(rate, rel=1e-15)
        before = p["p"].item()
        p, state = opt.update({"p": torch.tensor(0.1, dtype=F64)}, state, p)
        assert before - p["p"].item() == pytest.approx(rate, rel=1e-5)   # e = 1e-8 vs sqrt(v) ~ 3e-3


def test_first_update_under_warmup_linear_already_moves_the_parameters():
    params = tiny_params()
    opt = openai_adam(t_total=100)
    state = opt.init(params)
    assert opt.learning_rate(state).item() == pytest.approx(6.25e-5 * (1 - 0.01), rel=1e-15)
    new, state = opt.update(grad_steps(params, 1)[0], state, params)
    assert all(not torch.equal(new[k], params[k]) for k in params)
    assert opt.learning_rate(state).item() == pytest.approx(6.25e-5 * (1 - 0.02), rel=1e-15)


def test_decay_follows_tf_shapes_matrices_only_unless_vector_l2():
    """With zero gradients only the decay moves p: p * (1 - lrt * l2) for decayed tensors."""
    params = tiny_params()
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    lr, l2, b1, b2 = 0.1, 0.5, 0.9, 0.999
    lrt = lr * math.sqrt(1 - b2) / (1 - b1)
    for vector_l2 in (False, True):
        opt = openai_adam(lr, schedule="warmup_constant", warmup=0.0, t_total=10, l2=l2,
                          vector_l2=vector_l2, b1=b1, b2=b2)
        new, _ = opt.update(zeros, opt.init(params), params)
        for k, p in params.items():
            decayed = p.ndim > 1 or vector_l2
            expected = p - lrt * l2 * p if decayed else p
            torch.testing.assert_close(new[k], expected, rtol=1e-14, atol=0, msg=k)
            assert decayed == (not torch.equal(new[k], p)), k
    names = {k for k, p in params.items() if p.ndim > 1}
    assert {"model/we:0", "model/h0/attn/c_attn/w:0", "model/clf/w:0"} <= names
    assert not names & {"model/clf/b:0", "model/h0/ln_1/g:0", "model/h1/mlp/c_fc/b:0"}


def test_learning_rate_lives_in_state_and_scales_the_step():
    params = tiny_params()
    g = grad_steps(params, 1)[0]
    opt = openai_adam(0.01, schedule="warmup_constant", warmup=0.0, t_total=10, l2=0.0)
    state = opt.init(params)
    assert state.lr.dtype == F64 and state.lr.item() == 0.01
    one, _ = opt.update(g, state, params)
    three, _ = opt.update(g, state._replace(lr=state.lr.new_tensor(0.03)), params)
    for k in params:
        torch.testing.assert_close(three[k] - params[k], 3 * (one[k] - params[k]),
                                   rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Pure and in-place variants


def run_both(params, steps, opt, *, lr_at=None):
    pure_p, pure_s = params, opt.init(params)
    inpl_p = {k: v.clone() for k, v in params.items()}
    inpl_s = opt.init(inpl_p)
    for i, g in enumerate(steps):
        if i == lr_at:
            pure_s = pure_s._replace(lr=pure_s.lr * 3)
            inpl_s = inpl_s._replace(lr=inpl_s.lr * 3)
        before = {k: v.clone() for k, v in pure_p.items()}
        pure_p, pure_s = opt.update(g, pure_s, pure_p)
        out_p, out_s = opt.update_(g, inpl_s, inpl_p)
        assert out_p is inpl_p and out_s is inpl_s
        assert all(torch.equal(before[k], v) for k, v in before.items())  # pure: inputs untouched
    return (pure_p, pure_s), (inpl_p, inpl_s)


def assert_states_equal(a, b):
    (pa, sa), (pb, sb) = a, b
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"param {k}"
        assert torch.equal(sa.mu[k], sb.mu[k]) and torch.equal(sa.nu[k], sb.nu[k]), f"moments {k}"
        assert pa[k].dtype == pb[k].dtype
    assert torch.equal(sa.count, sb.count) and torch.equal(sa.skipped, sb.skipped)
    assert torch.equal(sa.lr, sb.lr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_update_is_bit_identical_to_pure(dtype):
    params = tiny_params(dtype)
    steps = grad_steps(params, 10, scale=0.05)
    steps[4]["model/h1/ln_2/g:0"][3] = float("nan")     # one skipped update in the middle
    opt = openai_adam(1e-2, schedule="warmup_cosine", warmup=0.2, t_total=10, vector_l2=True)
    pure, inplace = run_both(params, steps, opt, lr_at=6)
    assert_states_equal(pure, inplace)
    assert pure[1].count.item() == 9 and pure[1].skipped.item() == 1
    assert all(m.dtype == torch.float32 for m in pure[1].mu.values())


def test_moments_and_lr_are_float32_for_bf16_and_float64_for_float64():
    for dtype, mdt in [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                       (torch.float32, torch.float32), (F64, F64)]:
        state = openai_adam(t_total=1).init({"model/we:0": torch.zeros(3, 2, dtype=dtype)})
        assert state.mu["model/we:0"].dtype == mdt and state.nu["model/we:0"].dtype == mdt
        assert state.lr.dtype == mdt and state.lr.shape == ()
        assert state.count.shape == () and state.count.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# Non-finite gradients


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("variant", ["update", "update_"])
def test_nonfinite_gradients_skip_the_update_entirely(bad, variant):
    params = tiny_params(torch.float32)
    good, later = grad_steps(params, 2, scale=0.01)
    broken = {k: v.clone() for k, v in later.items()}
    broken["model/we:0"][1, 2] = bad
    opt = openai_adam(1e-2, warmup=0.0, t_total=10)

    p, s = {k: v.clone() for k, v in params.items()}, opt.init(params)
    p, s = getattr(opt, variant)(good, s, p)
    snapshot = ({k: v.clone() for k, v in p.items()}, optree.tree_map(torch.clone, s))
    p, s = getattr(opt, variant)(broken, s, p)
    assert_states_equal((p, s._replace(skipped=snapshot[1].skipped)), snapshot)
    assert s.skipped.item() == 1 and s.count.item() == 1
    p, s = getattr(opt, variant)(later, s, p)

    # Exactly as if the broken step had never been offered.
    q, r = opt.update(good, opt.init(params), params)
    q, r = opt.update(later, r, q)
    assert_states_equal((p, s._replace(skipped=r.skipped)), (q, r))


@pytest.mark.parametrize("variant", ["update", "update_"])
def test_nonfinite_raise_mode_names_the_tensor_and_touches_nothing(variant):
    params = tiny_params(torch.float32)
    g = grad_steps(params, 1)[0]
    g["model/h0/mlp/c_proj/b:0"][0] = float("nan")
    opt = openai_adam(t_total=10, nonfinite="raise")
    p, s = {k: v.clone() for k, v in params.items()}, opt.init(params)
    with pytest.raises(FloatingPointError, match="model/h0/mlp/c_proj/b:0"):
        getattr(opt, variant)(g, s, p)
    assert all(torch.equal(p[k], params[k]) for k in params)
    assert s.count.item() == 0 and all(torch.count_nonzero(m) == 0 for m in s.mu.values())


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs, words", [
    (dict(t_total=0), "t_total"),
    (dict(t_total=-5), "t_total"),
    (dict(t_total=10, lr=-1e-4), "lr"),
    (dict(t_total=10, warmup=-0.1), "warmup"),
    (dict(t_total=10, e=-1e-8), "e must"),
    (dict(t_total=10, l2=-0.01), "l2"),
    (dict(t_total=10, b1=1.0), "b1"),
    (dict(t_total=10, b1=-0.1), "b1"),
    (dict(t_total=10, b2=1.5), "b2"),
    (dict(t_total=10, schedule="warmup_exp"), "warmup_exp"),
    (dict(t_total=10, nonfinite="ignore"), "nonfinite"),
    (dict(t_total=float("nan")), "t_total"),
])
def test_bad_hyper_parameters_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        openai_adam(**kwargs)


@pytest.mark.parametrize("variant", ["update", "update_"])
def test_grads_unlike_params_raise_naming_the_key(variant):
    params = tiny_params(torch.float32)
    opt = openai_adam(t_total=10)
    state = opt.init(params)
    g = grad_steps(params, 1)[0]
    missing = {k: v for k, v in g.items() if k != "model/clf/b:0"}
    with pytest.raises(ValueError, match="missing.*model/clf/b:0"):
        getattr(opt, variant)(missing, state, params)
    with pytest.raises(ValueError, match="unexpected.*model/extra:0"):
        getattr(opt, variant)({**g, "model/extra:0": torch.zeros(2)}, state, params)
    with pytest.raises(ValueError, match=r"grads\['model/h1/attn/c_proj/w:0'\] has shape \(32, 32\)"):
        getattr(opt, variant)({**g, "model/h1/attn/c_proj/w:0": torch.zeros(32, 32)}, state, params)
    with pytest.raises(ValueError, match="empty"):
        opt.init({})


# ---------------------------------------------------------------------------------------------
# Clipping, state as a pytree


def test_clip_by_global_norm_is_one_factor_over_all_tensors():
    grads = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0], [4.0]])}   # global norm 5
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm.item() == 5.0
    torch.testing.assert_close(clipped["a"], torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(clipped["b"], torch.tensor([[0.0], [0.8]]))
    same, _ = clip_by_global_norm(grads, 10.0)
    assert all(torch.equal(same[k], grads[k]) for k in grads)


@pytest.mark.parametrize("variant", ["update", "update_"])
def test_a_given_grad_norm_is_the_one_that_clips(variant):
    """``grad_norm=global_norm(grads)`` changes nothing; another value is what clipping then uses."""
    params = tiny_params()
    (grads,) = grad_steps(params, 1, scale=10.0)
    opt = openai_adam(lr=1e-2, schedule="warmup_constant", warmup=0.0, t_total=10, max_grad_norm=1.0)
    fresh = lambda: ({k: v.clone() for k, v in params.items()}, opt.init(params))  # noqa: E731
    plain = getattr(opt, variant)(grads, *fresh()[::-1])
    given = getattr(opt, variant)(grads, *fresh()[::-1], grad_norm=global_norm(grads))
    assert all(torch.equal(given[1].mu[k], plain[1].mu[k]) for k in params)
    assert all(torch.equal(given[0][k], plain[0][k]) for k in params)
    doubled = getattr(opt, variant)(grads, *fresh()[::-1], grad_norm=2 * global_norm(grads))
    for k in params:   # the first moment is linear in the clipped gradient: half the clip factor
        torch.testing.assert_close(doubled[1].mu[k], plain[1].mu[k] / 2, rtol=1e-12, atol=0)


def test_state_is_a_plain_pytree_that_checkpoints_and_resumes(tmp_path):
    params = tiny_params(torch.float32)
    opt = openai_adam(1e-2, warmup=0.1, t_total=10)
    steps = grad_steps(params, 4)
    p, s = params, opt.init(params)
    for g in steps[:2]:
        p, s = opt.update(g, s, p)
    leaves, spec = optree.tree_flatten(s)
    assert all(isinstance(x, torch.Tensor) for x in leaves) and len(leaves) == 3 + 2 * len(params)
    torch.save({"params": p, "opt_state": s._asdict()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    p2, s2 = loaded["params"], AdamState(**loaded["opt_state"])
    s3 = optree.tree_unflatten(spec, leaves)
    for g in steps[2:]:
        p, s = opt.update(g, s, p)
        p2, s2 = opt.update(g, s2, p2)
    assert_states_equal((p, s), (p2, s2))
    assert isinstance(s3, AdamState) and torch.equal(s3.count, torch.tensor(2))


# ---------------------------------------------------------------------------------------------
# Minimising test functions (optax-style sanity)


def rosenbrock(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def quadratic(p):
    a = torch.tensor([[1.0, 10.0, 100.0]], dtype=F64)
    return 0.5 * (a * (p["w"] - torch.tensor([[1.0, -2.0, 3.0]], dtype=F64)) ** 2).sum()


@pytest.mark.parametrize("fn, start, minimum, lr, steps, clip", [
    (quadratic, {"w": torch.zeros(1, 3, dtype=F64)}, [[1.0, -2.0, 3.0]], 0.1, 500, -1.0),
    (rosenbrock, {"xy": torch.tensor([-1.2, 1.0], dtype=F64)}, [1.0, 1.0], 0.05, 1500, 1.0),
])
def test_minimises_quadratic_and_rosenbrock(fn, start, minimum, lr, steps, clip):
    opt = openai_adam(lr, warmup=0.0, t_total=steps, l2=0.0, max_grad_norm=clip)
    grad = torch.func.grad(fn)
    p, s = start, opt.init(start)
    for _ in range(steps):
        p, s = opt.update(grad(p), s, p)
    name = next(iter(p))
    torch.testing.assert_close(p[name], torch.tensor(minimum, dtype=F64), rtol=0, atol=5e-3)
    assert fn(p).item() < 1e-5 * fn(start).item()


# ---------------------------------------------------------------------------------------------
# torch.compile


SMALL = ("model/we:0", "model/h0/attn/c_attn/w:0", "model/h0/attn/c_attn/b:0", "model/h0/ln_1/g:0",
         "model/clf/w:0", "model/clf/b:0")


@pytest.fixture
def dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_update_equals_eager_and_never_recompiles(dynamo):
    """Inductor-compiled in-place update vs the eager pure one: 6 steps with new grads, a new lr
    and a skipped non-finite step, one graph."""
    from torch._dynamo.testing import CompileCounterWithBackend
    params = {k: v for k, v in tiny_params(torch.float32).items() if k in SMALL}   # fast to compile
    steps = grad_steps(params, 6, scale=0.05)
    steps[3]["model/we:0"][0, 0] = float("inf")
    opt = openai_adam(1e-2, warmup=0.2, t_total=6, vector_l2=True)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(opt.update_, backend=counter, fullgraph=True)
    p, s = params, opt.init(params)
    pc = {k: v.clone() for k, v in params.items()}
    sc = opt.init(pc)
    for i, g in enumerate(steps):
        if i == 2:
            s, sc = s._replace(lr=s.lr.new_tensor(0.03)), sc._replace(lr=sc.lr.new_tensor(0.03))
        p, s = opt.update(g, s, p)
        compiled(g, sc, pc)
        for k in params:
            torch.testing.assert_close(pc[k], p[k], rtol=2e-6, atol=1e-7, msg=k)
            torch.testing.assert_close(sc.nu[k], s.nu[k], rtol=2e-6, atol=1e-12, msg=k)
        assert torch.equal(sc.count, s.count) and torch.equal(sc.skipped, s.skipped)
    assert s.skipped.item() == 1
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for {len(steps)} updates"


def test_pure_update_compiles_once_with_new_step_and_lr(dynamo):
    from torch._dynamo.testing import CompileCounterWithBackend
    params = tiny_params(torch.float32)
    opt = openai_adam(1e-2, warmup=0.2, t_total=6)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(opt.update, backend=counter, fullgraph=True)
    p, s = params, opt.init(params)
    pe, se = p, s
    for i, g in enumerate(grad_steps(params, 3)):
        s = s._replace(lr=torch.tensor(0.01 * (i + 1)))
        se = se._replace(lr=s.lr)
        p, s = compiled(g, s, p)
        pe, se = opt.update(g, se, pe)
        assert all(torch.equal(p[k], pe[k]) for k in params)
    assert counter.frame_count == 1
