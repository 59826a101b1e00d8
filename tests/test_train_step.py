"""train_step: gpt1f.loss_fn's gradients and one OpenAIAdam update, accumulation, compile, metrics."""
import pytest
import torch

import gpt1f
from gpt1f import random as grandom
from gpt1f.optim import global_norm, openai_adam
from gpt1f.train import accumulated_grads, make_train_step, train_step

CFG = gpt1f.Config.tiny()
F64 = torch.float64


def make_params(dtype=F64, seed=0, n_class=1):
    params = gpt1f.init_params(CFG, seed=seed, dtype=dtype, n_class=n_class)
    gen = torch.Generator().manual_seed(seed + 1)
    noise = lambda v: 0.1 * torch.randn(v.shape, generator=gen, dtype=F64).to(dtype)  # noqa: E731
    return {k: v + noise(v) if v.ndim == 1 else v for k, v in params.items()}


def make_batch(n_batch=4, n_choice=2, t=12, seed=0, dtype=F64):
    """Multiple-choice rows: _start_, random tokens, _classify_ at the end of each row, then padding."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CFG.n_vocab, (n_batch, n_choice, t), generator=gen)
    lengths = torch.randint(4, t + 1, (n_batch, n_choice), generator=gen)
    ar = torch.arange(t)
    mask = ar < lengths[..., None]
    tokens = torch.where(ar == lengths[..., None] - 1, CFG.clf_token, tokens * mask)
    tokens[..., 0] = CFG.n_vocab
    label = torch.randint(0, n_choice, (n_batch,), generator=gen)
    return {"tokens": tokens, "mask": mask.to(dtype), "label": label}


def moving_opt(**changes):
    """No warm-up, so the very first update moves the parameters."""
    return openai_adam(**{**dict(lr=1e-3, schedule="warmup_constant", warmup=0.0, t_total=100), **changes})


def assert_trees_close(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


@pytest.fixture
def dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Eager


def test_train_step_is_grad_of_loss_fn_then_update_with_tensor_metrics():
    params, batch, key = make_params(), make_batch(), grandom.key(3)
    opt = moving_opt(lr=1e-2, max_grad_norm=0.5)
    state = opt.init(params)
    grads, loss = torch.func.grad_and_value(gpt1f.loss_fn)(params, batch, cfg=CFG, key=key,
                                                           train=True, lm_coef=0.5)
    expected_p, expected_s = opt.update(grads, state, params)

    new_p, new_s, metrics = train_step(params, state, batch, key, cfg=CFG, opt=opt, lm_coef=0.5,
                                       fused_lm=False)
    assert_trees_close(new_p, expected_p, rtol=1e-13, atol=1e-16)
    assert_trees_close(new_s.mu, expected_s.mu, rtol=1e-13, atol=1e-16)
    assert torch.equal(new_s.count, torch.tensor(1))

    assert set(metrics) == {"loss", "clf_loss", "lm_loss", "grad_norm", "lr", "nonfinite"}
    assert all(isinstance(v, torch.Tensor) and v.shape == () for v in metrics.values())
    _, clf_losses, lm_losses = gpt1f.multiple_choice(params, batch, cfg=CFG, key=key, train=True)
    torch.testing.assert_close(metrics["loss"], loss, rtol=1e-14, atol=0)
    torch.testing.assert_close(metrics["clf_loss"], clf_losses.mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(metrics["lm_loss"], lm_losses.mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(metrics["grad_norm"], global_norm(grads), rtol=1e-14, atol=0)
    assert metrics["grad_norm"] > 0.5                                      # clipping was active
    assert metrics["lr"].item() == pytest.approx(1e-2, rel=1e-15)
    assert metrics["nonfinite"].item() == 0


def test_lm_coef_zero_trains_the_classifier_loss_alone():
    params, batch, key = make_params(), make_batch(), grandom.key(0)
    opt = moving_opt()
    _, _, metrics = train_step(params, opt.init(params), batch, key, cfg=CFG, opt=opt, lm_coef=0.0)
    assert metrics["lm_loss"].item() == 0.0
    torch.testing.assert_close(metrics["loss"], metrics["clf_loss"], rtol=0, atol=0)
    reference = gpt1f.loss_fn(params, batch, cfg=CFG, key=key, train=True, lm_coef=0.0)
    torch.testing.assert_close(metrics["loss"], reference, rtol=1e-14, atol=0)


def test_other_heads_plug_in():
    """classify over [B, T] rows with a 3-class clf/w, by name or as a task function."""
    params = make_params(n_class=3)
    rows = make_batch(n_batch=4, n_choice=1)
    batch = {"tokens": rows["tokens"][:, 0], "mask": rows["mask"][:, 0],
             "label": torch.tensor([0, 2, 1, 2])}
    key, opt = grandom.key(9), moving_opt()
    grads = torch.func.grad(gpt1f.loss_fn)(params, batch, cfg=CFG, head="classify", key=key,
                                           train=True)
    expected, _ = opt.update(grads, opt.init(params), params)
    for head in ("classify", gpt1f.heads.classify_task):
        new_p, _, _ = train_step(params, opt.init(params), batch, key, cfg=CFG, opt=opt,
                                 head=head, fused_lm=False)
        assert_trees_close(new_p, expected, rtol=1e-13, atol=1e-16)


def test_accumulation_averages_micro_batch_gradients_with_folded_keys():
    params, batch, key = make_params(), make_batch(n_batch=6), grandom.key(11)
    grad_fn = torch.func.grad_and_value(gpt1f.loss_fn)
    parts = [grad_fn(params, {k: v[2 * i:2 * i + 2] for k, v in batch.items()}, cfg=CFG,
                     key=grandom.fold_in(key, i), train=True) for i in range(3)]
    mean_grads = {k: sum(g[k] for g, _ in parts) / 3 for k in params}
    mean_loss = sum(value for _, value in parts) / 3

    grads, (loss, _, _) = accumulated_grads(params, batch, key, cfg=CFG, accum=3)
    assert_trees_close(grads, mean_grads, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss, mean_loss, rtol=1e-12, atol=0)

    opt = moving_opt()
    expected, _ = opt.update(mean_grads, opt.init(params), params)
    new_p, _, metrics = train_step(params, opt.init(params), batch, key, cfg=CFG, opt=opt, accum=3)
    assert_trees_close(new_p, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(metrics["loss"], mean_loss, rtol=1e-12, atol=0)
    # Dropout differs per micro-batch key: accum=3 is not the accum=1 gradient.
    whole, _ = accumulated_grads(params, batch, key, cfg=CFG, accum=1)
    assert any(not torch.allclose(whole[k], grads[k]) for k in params)


@pytest.mark.parametrize("n_batch, accum", [(4, 3), (4, 0), (4, 1.5)])
def test_accumulation_needs_equal_micro_batches(n_batch, accum):
    params, opt = make_params(), moving_opt()
    with pytest.raises(ValueError, match="micro-batches"):
        train_step(params, opt.init(params), make_batch(n_batch), grandom.key(0), cfg=CFG, opt=opt,
                   accum=accum)


def test_in_place_train_step_is_bit_identical_to_pure():
    params = make_params(torch.float32)
    opt = moving_opt(vector_l2=True)
    p, s = params, opt.init(params)
    q = {k: v.clone() for k, v in params.items()}
    r = opt.init(q)
    for i in range(3):
        batch, key = make_batch(seed=i, dtype=torch.float32), grandom.key(i)
        p, s, m1 = train_step(p, s, batch, key, cfg=CFG, opt=opt)
        q2, r2, m2 = train_step(q, r, batch, key, cfg=CFG, opt=opt, inplace=True)
        assert q2 is q and r2 is r
        assert all(torch.equal(p[k], q[k]) for k in params)
        assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert torch.equal(s.count, r.count) and s.count.item() == 3


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    params, batch = make_params(torch.float32), make_batch(dtype=torch.float32)
    opt = moving_opt(lr=1e-2, t_total=20)
    step = make_train_step(CFG, opt)
    state, losses = opt.init(params), []
    for i in range(20):
        params, state, metrics = step(params, state, batch, grandom.key(i))
        losses.append(metrics["loss"].item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


# ---------------------------------------------------------------------------------------------
# Non-finite gradients


def nan_batch():
    """An example whose mask is all zero: its LM loss is 0/0, so every gradient is NaN."""
    batch = make_batch(dtype=torch.float32)
    batch["mask"][1] = 0.0
    return batch


def test_nonfinite_gradients_skip_the_update_and_are_reported():
    params = make_params(torch.float32)
    opt = moving_opt()
    state = opt.init(params)
    new_p, new_s, metrics = train_step(params, state, nan_batch(), grandom.key(0), cfg=CFG, opt=opt)
    assert metrics["nonfinite"].item() == 1 and not torch.isfinite(metrics["grad_norm"])
    assert all(torch.equal(new_p[k], params[k]) for k in params)
    assert new_s.count.item() == 0 and new_s.skipped.item() == 1


def test_nonfinite_raise_mode_raises_eager_and_compiled(dynamo):
    params = make_params(torch.float32)
    opt = moving_opt(nonfinite="raise")
    state = opt.init(params)
    with pytest.raises(FloatingPointError, match="model/we:0"):
        train_step(params, state, nan_batch(), grandom.key(0), cfg=CFG, opt=opt)
    step = make_train_step(CFG, opt, compile=True, backend="eager")
    step(params, state, make_batch(dtype=torch.float32), grandom.key(0))    # finite: fine
    with pytest.raises(FloatingPointError, match="update skipped"):
        step(params, state, nan_batch(), grandom.key(1))


# ---------------------------------------------------------------------------------------------
# torch.compile


def test_compiled_train_step_is_one_graph_and_equals_eager(dynamo):
    """Gradients over 2 micro-batches plus the in-place update as one fullgraph capture; 3 steps
    with new data, keys and learning rate compile once. (The inductor numerics of the update are
    checked in test_optim; the model's in test_model. ``aot_eager`` keeps this test fast on CPU.)"""
    from torch._dynamo.testing import CompileCounterWithBackend
    counter = CompileCounterWithBackend("aot_eager")
    opt = moving_opt(lr=1e-2, schedule="warmup_linear", warmup=0.3, t_total=3, vector_l2=True)
    compiled = make_train_step(CFG, opt, accum=2, inplace=True, compile=True, backend=counter)
    p = make_params(torch.float32)
    s = opt.init(p)
    pc = {k: v.clone() for k, v in p.items()}
    sc = opt.init(pc)
    for i in range(3):
        batch, key = make_batch(seed=i, dtype=torch.float32), grandom.key(i)
        if i == 2:
            s, sc = s._replace(lr=s.lr.new_tensor(0.03)), sc._replace(lr=sc.lr.new_tensor(0.03))
        p, s, m = train_step(p, s, batch, key, cfg=CFG, opt=opt, accum=2)
        _, _, mc = compiled(pc, sc, batch, key)
        for name in m:
            torch.testing.assert_close(mc[name], m[name], rtol=1e-5, atol=1e-7, msg=name)
        # clf/b's gradient is zero up to rounding (the bias is shared by all choices and the
        # softmax over choices sums to 1), and Adam turns that rounding into full-size steps.
        del p["model/clf/b:0"]
        assert_trees_close({k: pc[k] for k in p}, p, rtol=1e-4, atol=1e-6)
        p["model/clf/b:0"] = pc["model/clf/b:0"].clone()
    assert torch.equal(sc.count, s.count) and s.count.item() == 3
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} graphs for 3 steps"
