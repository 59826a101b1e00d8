"""The fused LM loss: the value and gradients of ``lm_losses(...).mean()`` without the logits."""
import pytest
import torch

import gpt1f
from gpt1f import random as grandom
from gpt1f.fused_lm_loss import lm_loss_mean
from gpt1f.loss import loss_and_parts
from gpt1f.model import lm_losses
from gpt1f.train import train_step
from tests.test_train_step import CFG, make_batch, moving_opt

F64 = torch.float64
V, E = 37, 6


def inputs(lead=(3, 2), t=9, dtype=F64, seed=0, weighted=False):
    """we [V, E], hidden [*lead, t, E], tokens, mask [*lead, t] (prefix masks, >= 2 real tokens)."""
    gen = torch.Generator().manual_seed(seed)
    we = torch.randn(V, E, generator=gen, dtype=F64).to(dtype)
    hidden = torch.randn(*lead, t, E, generator=gen, dtype=F64).to(dtype)
    tokens = torch.randint(0, V, (*lead, t), generator=gen)
    lengths = torch.randint(2, t + 1, lead, generator=gen)
    mask = (torch.arange(t) < lengths[..., None]).to(dtype)
    if weighted:                                    # real-valued weights on the real tokens
        mask = mask * torch.rand(mask.shape, generator=gen, dtype=F64).to(dtype).add(0.5)
    return we, hidden, tokens, mask


def reference(we, hidden, tokens, mask):
    return lm_losses(we, hidden, tokens, mask).mean()


def value_and_grads(fn, we, hidden, tokens, mask):
    we, hidden = we.clone().requires_grad_(), hidden.clone().requires_grad_()
    value = fn(we, hidden, tokens, mask)
    return (value, *torch.autograd.grad(value, (we, hidden)))


@pytest.mark.parametrize("chunk_rows", [1, 5, 512])
@pytest.mark.parametrize("vocab_rows", [0, 1, 8, None])      # V = 37: whole, 37 slices, 4 and a rest
@pytest.mark.parametrize("weighted", [False, True])
def test_value_and_grads_equal_the_plain_mean_in_float64(chunk_rows, vocab_rows, weighted):
    args = inputs(weighted=weighted)
    ours = value_and_grads(lambda *a: lm_loss_mean(*a, chunk_rows=chunk_rows, vocab_rows=vocab_rows), *args)
    theirs = value_and_grads(reference, *args)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert ours[0].shape == () and ours[1].abs().sum() > 0 and ours[2].abs().sum() > 0


def test_masked_positions_get_no_gradient_and_padding_content_is_ignored():
    we, hidden, tokens, mask = inputs(seed=1)
    _, _, grad_h = value_and_grads(lm_loss_mean, we, hidden, tokens, mask)
    # position t predicts t + 1: its gradient is zero exactly when the target t + 1 is masked
    targets_masked = torch.cat([mask[..., 1:] == 0, torch.ones_like(mask[..., :1], dtype=torch.bool)], -1)
    assert torch.all(grad_h[targets_masked] == 0)
    assert torch.all(grad_h[~targets_masked].abs().sum(-1) > 0)
    garbage = torch.where(mask.bool(), tokens, torch.randint_like(tokens, 0, V))
    moved = torch.where(targets_masked[..., None], hidden + 100.0, hidden)
    assert lm_loss_mean(we, moved, garbage, mask) == lm_loss_mean(we, hidden, tokens, mask)


@pytest.mark.parametrize("chunk_rows", [4, 512])
@pytest.mark.parametrize("vocab_rows", [0, 10])
def test_keeping_every_position_gives_the_same_result_as_skipping(chunk_rows, vocab_rows):
    """The CUDA path (every position kept with weight 0) against the CPU path (masked ones dropped)."""
    we, hidden, tokens, mask = inputs(lead=(5,), seed=2)
    op = torch.ops.gpt1f.lm_loss_mean_and_grads
    skipped = op(we, hidden, tokens, mask, chunk_rows, True, vocab_rows)
    kept = op(we, hidden, tokens, mask, chunk_rows, False, vocab_rows)
    for a, b in zip(skipped, kept):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("skip_masked", [True, False])
@pytest.mark.parametrize("vocab_rows", [0, 10])
def test_a_sequence_without_targets_makes_everything_nan_as_tf(skip_masked, vocab_rows):
    we, hidden, tokens, mask = inputs(lead=(4,), seed=3)
    mask[2, 1:] = 0
    assert torch.isnan(reference(we, hidden, tokens, mask))
    loss, grad_we, grad_h = torch.ops.gpt1f.lm_loss_mean_and_grads(we, hidden, tokens, mask, 3, skip_masked,
                                                                   vocab_rows)
    assert torch.isnan(loss) and torch.isnan(grad_we).any() and torch.isnan(grad_h).any()


@pytest.mark.parametrize("vocab_rows", [None, 8])
def test_float32_agrees_with_float64(vocab_rows):
    args64 = inputs(lead=(4, 2), t=12, seed=4)
    args32 = [a.float() if a.is_floating_point() else a for a in args64]
    ours = value_and_grads(lambda *a: lm_loss_mean(*a, vocab_rows=vocab_rows), *args32)
    theirs = value_and_grads(reference, *args64)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vocab_rows", [None, 8])
def test_bfloat16_inputs_keep_a_float32_softmax(vocab_rows):
    """In slices, the gradient of ``hidden`` is summed over them in float32, then rounded once."""
    args = inputs(lead=(4,), t=12, dtype=torch.float32, seed=5)
    bf = [a.bfloat16() if a.is_floating_point() else a for a in args]
    value, grad_we, grad_h = value_and_grads(lambda *a: lm_loss_mean(*a, vocab_rows=vocab_rows), *bf)
    assert value.dtype == grad_h.dtype == grad_we.dtype == torch.bfloat16     # hidden's dtype
    expected = value_and_grads(reference, *args)
    for ours, theirs in zip((value, grad_we, grad_h), expected):
        torch.testing.assert_close(ours.float(), theirs, rtol=2e-2, atol=2e-3)


def test_func_grad_vmap_and_compile_agree_with_the_plain_gradients():
    we, hidden, tokens, mask = inputs(lead=(3,), seed=6)
    fused = lambda w, h: lm_loss_mean(w, h, tokens, mask, chunk_rows=4)   # noqa: E731
    plain = lambda w, h: reference(w, h, tokens, mask)                   # noqa: E731
    expected = torch.func.grad(plain, argnums=(0, 1))(we, hidden)
    for fn in (torch.func.grad(fused, argnums=(0, 1)),
               torch.compile(torch.func.grad(fused, argnums=(0, 1)), fullgraph=True, backend="eager"),
               torch.compile(torch.func.grad(fused, argnums=(0, 1)), fullgraph=True)):
        for a, b in zip(fn(we, hidden), expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    # per-example gradients: vmap over an axis of hidden states
    stack = torch.stack([hidden, hidden * 0.5, hidden + 1.0])
    per_example = torch.func.vmap(torch.func.grad(fused, argnums=1), in_dims=(None, 0))(we, stack)
    loop = torch.stack([torch.func.grad(plain, argnums=1)(we, h) for h in stack])
    torch.testing.assert_close(per_example, loop, rtol=1e-12, atol=1e-15)


def test_bad_inputs_are_refused_with_the_shapes():
    we, hidden, tokens, mask = inputs()
    with pytest.raises(ValueError, match="at least 2 positions"):
        lm_loss_mean(we, hidden[..., :1, :], tokens[..., :1], mask[..., :1])
    with pytest.raises(ValueError, match="disagree"):
        lm_loss_mean(we, hidden, tokens[..., :-1], mask[..., :-1])
    with pytest.raises(ValueError, match="chunk_rows"):
        lm_loss_mean(we, hidden, tokens, mask, chunk_rows=0)
    with pytest.raises(ValueError, match="vocab_rows"):
        lm_loss_mean(we, hidden, tokens, mask, vocab_rows=-1)


# ---------------------------------------------------------------------------------------------
# Through the heads and the train step

def mc_batch(seed=0):
    """Three multiple-choice examples over the whole context, as the train-step tests make them."""
    return make_batch(n_batch=3, t=CFG.n_ctx, seed=seed)


@pytest.mark.parametrize("head", ["multiple_choice", "classify"])
def test_the_loss_entrys_fused_lm_term_is_the_mean_of_the_heads_lm_losses(head):
    params, batch, key = gpt1f.init_params(CFG, seed=0, dtype=F64), mc_batch(), grandom.key(1)
    if head == "classify":
        params = gpt1f.init_params(CFG, seed=0, dtype=F64, n_class=3)
        batch = {k: v[:, 0] for k, v in batch.items() if k != "label"} | {"label": batch["label"]}
    out = getattr(gpt1f, head)(params, batch, cfg=CFG, key=key, train=True)
    assert out.lm_losses.shape == batch["tokens"].shape[:-1]
    for fused in (False, True):
        _, parts = loss_and_parts(params, batch, cfg=CFG, head=head, key=key, train=True,
                                  fused_lm=fused)
        torch.testing.assert_close(parts.lm, out.lm_losses.mean(), rtol=1e-12, atol=0)
        torch.testing.assert_close(parts.task, out.task_losses.mean(), rtol=1e-14, atol=0)


def test_loss_fn_gradients_fused_equal_plain_with_dropout():
    params, batch, key = gpt1f.init_params(CFG, seed=0, dtype=F64), mc_batch(1), grandom.key(2)
    grads = [torch.func.grad(gpt1f.loss_fn)(params, batch, cfg=CFG, key=key, train=True, fused_lm=f)
             for f in (False, True)]
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-10, atol=1e-15, msg=k)


def test_train_step_defaults_to_the_fused_loss_and_matches_the_plain_one():
    params, batch, key = gpt1f.init_params(CFG, seed=0, dtype=F64), mc_batch(2), grandom.key(3)
    opt = moving_opt()
    runs = [train_step(dict(params), opt.init(params), batch, key, cfg=CFG, opt=opt, fused_lm=f)
            for f in (False, True)]
    (plain_p, plain_s, plain_m), (fused_p, fused_s, fused_m) = runs
    for name in plain_m:
        torch.testing.assert_close(fused_m[name], plain_m[name], rtol=1e-12, atol=0, msg=name)
    for k in plain_s.mu:   # the moments are linear in the gradients: tight
        torch.testing.assert_close(fused_s.mu[k], plain_s.mu[k], rtol=1e-10, atol=1e-18, msg=k)
    for k in plain_p:      # Adam's m / sqrt(v) amplifies rounding in near-zero gradients
        torch.testing.assert_close(fused_p[k], plain_p[k], rtol=1e-9, atol=1e-12, msg=k)
    default = train_step(dict(params), opt.init(params), batch, key, cfg=CFG, opt=opt)
    assert all(torch.equal(default[2][n], fused_m[n]) for n in fused_m)


def test_under_autocast_the_head_runs_in_the_autocast_dtype_like_the_plain_loss():
    args = inputs(lead=(4,), t=12, dtype=torch.float32, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, plain = lm_loss_mean(*args), reference(*args)
    assert fused.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-2, atol=0)
    assert not torch.equal(fused, reference(*args))     # the matmuls did run in bf16


def test_under_plain_autograd_the_gradient_buffers_are_scaled_in_place_and_used_once():
    """torch.autograd (the regional step's) attaches the op's gradients with an autograd.Function
    that scales them in place by the incoming gradient; a second backward through the same graph
    is refused rather than silently wrong."""
    from gpt1f.fused_lm_loss import FRESH_GRAD
    we, hidden, tokens, mask = inputs()
    we, hidden = we.clone().requires_grad_(), hidden.clone().requires_grad_()
    want = torch.autograd.grad(3.0 * reference(we, hidden, tokens, mask), (we, hidden))
    loss = 3.0 * lm_loss_mean(we, hidden, tokens, mask)
    got = torch.autograd.grad(loss, (we, hidden), retain_graph=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert getattr(got[0], FRESH_GRAD, False)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, (we, hidden))
