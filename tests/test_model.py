"""Config, parameters, dropout keys, task heads, and the torch.func / torch.compile contract."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt1f
from gpt1f import random as grandom
from gpt1f import release_data
from gpt1f.dropout_keys import BLOCK_TAGS, MODEL_TAGS, site_key
from tests.conftest import ROOT
from tests.test_tf_parity import make_batch, perturbed_params

# ---------------------------------------------------------------------------------------------
# Config


def test_config_defaults_are_gpt1():
    cfg = gpt1f.Config()
    assert (cfg.n_vocab, cfg.n_special, cfg.n_ctx, cfg.n_embd, cfg.n_head, cfg.n_layer) == \
        (40478, 3, 512, 768, 12, 12)
    assert cfg.afn == "gelu" and cfg.embd_pdrop == cfg.attn_pdrop == cfg.resid_pdrop == cfg.clf_pdrop == 0.1
    assert cfg.n_rows == 40478 + 3 + 512 and cfg.clf_token == 40480
    with pytest.raises(Exception):
        cfg.n_embd = 10  # frozen


@pytest.mark.parametrize("changes, words", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(afn="tanh"), "afn"),
    (dict(attn_pdrop=1.0), "attn_pdrop"),
    (dict(n_layer=0), "n_layer"),
])
def test_config_rejects_bad_values(changes, words):
    with pytest.raises(ValueError, match=words):
        gpt1f.Config.tiny(**changes)


def test_pretrained_config_caps_n_ctx_at_512():
    assert gpt1f.Config.gpt1(n_ctx=77).n_ctx == 77
    with pytest.raises(ValueError, match="512"):
        gpt1f.Config.gpt1(n_ctx=513)


# ---------------------------------------------------------------------------------------------
# Parameters


def test_param_names_and_shapes_are_the_tf_variables():
    """Every block variable has the release's shape (params_shapes.json, arrays 2..145)."""
    cfg = gpt1f.Config.gpt1()
    shapes = gpt1f.param_shapes(cfg)
    release = json.loads(release_data.path("params_shapes.json").read_text())
    assert len(release) == 146
    block_names = [k for k in shapes if k.startswith("model/h")]
    assert [list(shapes[k]) for k in block_names] == release[2:]
    assert shapes["model/we:0"] == (40478 + 3 + 512, 768)
    assert release[0] == [512, 768] and release[1] == [40478, 768]
    assert shapes["model/clf/w:0"] == (768, 1) and shapes["model/clf/b:0"] == (1,)
    assert len(shapes) == 1 + 12 * 12 + 2


def test_init_params_follows_tf_initialisers_and_draws_each_layer_separately():
    cfg = gpt1f.Config.tiny(n_embd=64, n_head=4)
    state = torch.random.get_rng_state()
    params = gpt1f.init_params(cfg, seed=3)
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG must be untouched"
    assert set(params) == set(gpt1f.param_shapes(cfg))
    for name, value in params.items():
        assert tuple(value.shape) == gpt1f.param_shapes(cfg)[name] and value.dtype == torch.float32
        if name.endswith("/b:0"):
            assert torch.count_nonzero(value) == 0, name
        elif name.endswith("/g:0"):
            assert torch.all(value == 1), name
        else:
            assert abs(value.std().item() - 0.02) < 0.004, name
    assert not torch.equal(params["model/h0/mlp/c_fc/w:0"], params["model/h1/mlp/c_fc/w:0"])
    again = gpt1f.init_params(cfg, seed=3)
    assert all(torch.equal(params[k], again[k]) for k in params)
    other = gpt1f.init_params(cfg, seed=4)
    assert not torch.equal(params["model/we:0"], other["model/we:0"])


def test_scope_views_one_layer():
    params = gpt1f.init_params(gpt1f.Config.tiny(), seed=0)
    layer = gpt1f.scope(params, "model/h1/")
    assert len(layer) == 12 and layer["ln_2/g:0"] is params["model/h1/ln_2/g:0"]


def test_import_is_light():
    code = ("import sys, gpt1f; heavy = [m for m in ('jax', 'orbax', 'orbax.checkpoint', 'spacy', "
            "'pandas', 'transformers', 'safetensors', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Keys and dropout


def test_uniform_is_a_pure_function_of_key_and_shape():
    k = grandom.key(0)
    a, b = grandom.uniform(k, (1000,)), grandom.uniform(k, (1000,))
    assert torch.equal(a, b)
    assert not torch.equal(a, grandom.uniform(grandom.key(1), (1000,)))
    assert not torch.equal(a, grandom.uniform(grandom.fold_in(k, 0), (1000,)))
    big = grandom.uniform(k, (200_000,))
    assert 0 <= big.min() and big.max() < 1
    assert abs(big.mean().item() - 0.5) < 0.005 and abs(big.std().item() - 12 ** -0.5) < 0.005
    keys = grandom.split(k, 8)
    assert keys.shape == (8,) and len(set(keys.tolist())) == 8


def test_dropout_semantics():
    x = torch.randn(64, 64)
    assert grandom.dropout(x, 0.1, key=None, train=False) is x
    assert grandom.dropout(x, 0.0, key=None, train=True) is x
    with pytest.raises(ValueError, match="key"):
        grandom.dropout(x, 0.1, key=None, train=True)
    y = grandom.dropout(x, 0.25, key=grandom.key(0), train=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert torch.equal(y, grandom.dropout(x, 0.25, key=grandom.key(0), train=True))
    assert not torch.equal(y, grandom.dropout(x, 0.25, key=grandom.key(1), train=True))
    shared = grandom.dropout(torch.ones(4, 3, 8), 0.5, key=grandom.key(2), train=True, noise_shape=(4, 1, 8))
    assert torch.equal(shared[:, 0], shared[:, 1]) and torch.equal(shared[:, 0], shared[:, 2])


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 1 / 3, 0.05, 0.9999999, 2**-24, 3 * 2**-26, 1e-45])
def test_dropout_keeps_exactly_the_draws_at_least_p_in_float32(p):
    """The integer threshold of ``_kept`` is the float32 comparison ``uniform >= p``: on every
    24-bit draw next to the threshold, on random draws, eagerly and compiled."""
    p32 = torch.tensor(p, dtype=torch.float32)
    edge = int(p32.double() * 2**24)
    near = torch.arange(max(edge - 4, 0), min(edge + 5, 2**24), dtype=torch.int32)
    assert torch.equal(grandom._kept(near, p, torch.float32), (near.float() * 2**-24 >= p32).float())
    drawn = grandom.bits(grandom.key(5), (50_000,))
    expected = (grandom._unit(drawn, torch.float32) >= p32).float()
    assert torch.equal(grandom._kept(drawn, p, torch.float32), expected)
    x = torch.randn(50_000)
    eager = grandom.dropout(x, p, key=grandom.key(5), train=True)
    assert torch.equal(eager, x * expected * (1.0 / (1.0 - p)))
    torch._dynamo.reset()                                 # each rate is a graph of its own
    compiled = torch.compile(lambda x, k: grandom.dropout(x, p, key=k, train=True), fullgraph=True)
    assert torch.equal(compiled(x, grandom.key(5)), eager)


def test_gelu_compiled_is_the_tanh_form_without_its_cancellation():
    """Compiled, ``gelu`` is written ``x * sigmoid(2u)``: the tanh form's values and gradients in
    float64, and in float32 a few ulps of the exact function even in the negative tail, where
    ``1 + tanh(u)`` in float32 loses most of its digits."""
    from gpt1f.layers import gelu
    torch._dynamo.reset()
    compiled = torch.compile(gelu, fullgraph=True)
    x = torch.linspace(-3, 12, 3001, dtype=torch.float64, requires_grad=True)
    y, y_ref = compiled(x), F.gelu(x, approximate="tanh")
    torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0],
                               torch.autograd.grad(y_ref.sum(), x)[0], rtol=1e-12, atol=1e-15)
    tail = torch.linspace(-9, 3, 2401, dtype=torch.float64)
    u = 0.7978845608028654 * (tail + 0.044715 * tail**3)
    exact = tail * torch.sigmoid(2 * u)                 # float64, no cancellation either
    y32 = compiled(tail.float()).double()
    assert ((y32 - exact).abs() / exact.abs()).max() < 2e-5


def test_training_without_a_key_raises_and_eval_needs_none():
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg, dtype=torch.float32), make_batch(cfg)
    with pytest.raises(ValueError, match="key"):
        gpt1f.loss_fn(params, batch, cfg=cfg, train=True)
    assert torch.isfinite(gpt1f.loss_fn(params, batch, cfg=cfg))
    no_drop = gpt1f.Config.tiny(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, clf_pdrop=0.0)
    torch.testing.assert_close(gpt1f.loss_fn(params, batch, cfg=no_drop, train=True),
                               gpt1f.loss_fn(params, batch, cfg=no_drop))


def test_same_key_same_loss_different_key_different_loss():
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg, dtype=torch.float32), make_batch(cfg)
    loss = lambda k: gpt1f.loss_fn(params, batch, cfg=cfg, key=grandom.key(k), train=True)  # noqa: E731
    assert torch.equal(loss(0), loss(0)) and not torch.equal(loss(0), loss(1))


def test_embedding_dropout_masks_whole_rows_shared_with_the_lm_head():
    cfg = gpt1f.Config.tiny(embd_pdrop=0.5)
    params = perturbed_params(cfg, dtype=torch.float32)
    key = grandom.key(3)
    we = params["model/we:0"]
    from gpt1f.model import embedding_matrix
    dropped = embedding_matrix(params, cfg=cfg, key=key, train=True)
    keep = grandom.uniform(site_key(key, "embd"), we.shape) >= 0.5
    assert torch.equal(dropped, we * keep / 0.5)
    # the lookup reads rows of the dropped matrix, so a repeated token sees one mask
    tokens = torch.tensor([[5, 7, 5, 5]])
    no_other = cfg.replace(attn_pdrop=0.0, resid_pdrop=0.0)
    from gpt1f.model import embed
    rows = embed(dropped, tokens, cfg=no_other) - dropped[cfg.pos_offset:cfg.pos_offset + 4]
    for t in (0, 2, 3):
        torch.testing.assert_close(rows[0, t], dropped[5])
    assert torch.count_nonzero(dropped[5]) < cfg.n_embd  # the row really carries a mask
    hidden = torch.randn(2, 5, cfg.n_embd)
    torch.testing.assert_close(gpt1f.lm_logits(params, hidden, cfg=cfg, key=key, train=True),
                               hidden @ dropped.T)


def test_classifier_dropout_is_shared_across_choices():
    """Identical choices get identical logits under training iff the clf mask is [B, 1, E]."""
    cfg = gpt1f.Config.tiny(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, clf_pdrop=0.5)
    params = perturbed_params(cfg, dtype=torch.float32)
    batch = make_batch(cfg)
    batch["tokens"][:, 1] = batch["tokens"][:, 0]
    logits, _, _ = gpt1f.multiple_choice(params, batch, cfg=cfg, key=grandom.key(0), train=True)
    torch.testing.assert_close(logits[:, 0], logits[:, 1], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(logits, gpt1f.multiple_choice(params, batch, cfg=cfg)[0])


# ---------------------------------------------------------------------------------------------
# Heads


def test_classify_head_matches_a_direct_computation():
    cfg = gpt1f.Config.tiny()
    params = perturbed_params(cfg, dtype=torch.float64)
    params["model/clf/w:0"] = torch.randn(cfg.n_embd, 5, dtype=torch.float64)
    params["model/clf/b:0"] = torch.randn(5, dtype=torch.float64)
    mc = make_batch(cfg)
    batch = {"tokens": mc["tokens"][:, 0], "mask": mc["mask"][:, 0], "label": torch.tensor([0, 4, 2])}
    logits, clf_losses, lm = gpt1f.classify(params, batch, cfg=cfg)
    hidden = gpt1f.transformer(params, batch["tokens"], cfg=cfg)
    first = [int(np.argmax(row.numpy() == cfg.clf_token)) for row in batch["tokens"]]
    pooled = torch.stack([hidden[i, j] for i, j in enumerate(first)])
    expected = pooled @ params["model/clf/w:0"] + params["model/clf/b:0"]
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(clf_losses, F.cross_entropy(expected, batch["label"], reduction="none"))
    assert lm.shape == (3,)
    # the multiple-choice lm_losses of choice 0 are the same per-sequence losses
    torch.testing.assert_close(lm, gpt1f.multiple_choice(params, mc, cfg=cfg)[2][:, 0])
    loss = gpt1f.loss_fn(params, batch, cfg=cfg, head="classify", lm_coef=0.5)
    torch.testing.assert_close(loss, clf_losses.mean() + 0.5 * lm.mean())


def test_similarity_sums_both_orderings():
    cfg = gpt1f.Config.tiny()
    params = perturbed_params(cfg, dtype=torch.float64)
    batch = make_batch(cfg)
    batch["label"] = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    scores, losses, lm = gpt1f.similarity(params, batch, cfg=cfg)
    swapped = {**batch, "tokens": batch["tokens"].flip(1), "mask": batch["mask"].flip(1)}
    torch.testing.assert_close(scores, gpt1f.similarity(params, swapped, cfg=cfg)[0])
    hidden = gpt1f.transformer(params, batch["tokens"], cfg=cfg)
    from gpt1f.heads import pool_clf_token
    pooled = pool_clf_token(hidden, batch["tokens"], cfg.clf_token).sum(1)
    expected = (pooled @ params["model/clf/w:0"] + params["model/clf/b:0"])[:, 0]
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(losses, (expected - batch["label"]).square())
    bce = gpt1f.similarity(params, {**batch, "label": torch.tensor([0, 1, 1])}, cfg=cfg, objective="bce")[1]
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(expected, torch.tensor([0., 1, 1]).double(),
                                                                       reduction="none"))
    assert lm.shape == (3, 2)
    with pytest.raises(ValueError, match="objective"):
        gpt1f.similarity(params, batch, cfg=cfg, objective="hinge")


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def ops_run(fn) -> set[str]:
    """The names of the operators ``fn`` dispatches (e.g. ``'gpt1f.lm_loss_mean_and_grads'``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))
    names: set[str] = set()
    with Log():
        fn()
    return names


def test_lm_coef_zero_skips_the_lm_head():
    """Not only is the LM term 0: the tied head never runs (its FLOPs are not spent, the fused
    op is not called)."""
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg), make_batch(cfg)
    _, clf_losses, _ = gpt1f.multiple_choice(params, batch, cfg=cfg)

    def loss(coef, fused_lm=False):
        return gpt1f.loss_fn(params, batch, cfg=cfg, lm_coef=coef, fused_lm=fused_lm)
    torch.testing.assert_close(loss(0.0), clf_losses.mean())
    scoring = flops(lambda: gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=cfg))
    assert flops(lambda: loss(0.0)) == scoring
    b, c, t = batch["tokens"].shape
    assert flops(lambda: loss(0.5)) - scoring == 2 * b * c * (t - 1) * cfg.n_embd * cfg.n_rows
    fused_op = "gpt1f.lm_loss_mean_and_grads"
    assert fused_op in ops_run(lambda: loss(0.5, fused_lm=True))
    assert fused_op not in ops_run(lambda: loss(0.0, fused_lm=True))


@pytest.mark.parametrize("head, batch_of, shape", [
    ("multiple_choice", lambda mc: mc, (3, 2)),
    ("classify", lambda mc: {k: v[:, 0] if k != "label" else v for k, v in mc.items()}, (3,)),
    ("similarity", lambda mc: {**mc, "label": torch.rand(3, dtype=torch.float64)}, (3, 2)),
])
def test_every_head_returns_one_head_output_with_per_sequence_lm_losses(head, batch_of, shape):
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg), batch_of(make_batch(cfg))
    if head == "classify":                                      # two classes: labels 0 and 1
        params["model/clf/w:0"] = torch.randn(cfg.n_embd, 2, dtype=torch.float64)
        params["model/clf/b:0"] = torch.zeros(2, dtype=torch.float64)
    for kwargs in ({}, {"key": grandom.key(0), "train": True}):
        out = getattr(gpt1f, head)(params, batch, cfg=cfg, **kwargs)
        assert isinstance(out, gpt1f.HeadOutput) and out.task_losses.shape == (3,)
        assert out.lm_losses.shape == shape == batch["tokens"].shape[:-1]
        logits, task_losses, lm_losses = out                      # unpacks as a tuple
        torch.testing.assert_close(gpt1f.loss_fn(params, batch, cfg=cfg, head=head, **kwargs),
                                   task_losses.mean() + 0.5 * lm_losses.mean())


def test_an_unknown_head_is_named():
    cfg = gpt1f.Config.tiny()
    with pytest.raises(ValueError, match="'regress'"):
        gpt1f.loss_fn(perturbed_params(cfg), make_batch(cfg), cfg=cfg, head="regress")


def test_every_dropout_site_draws_from_its_own_key():
    """The key table gives distinct keys for all sites of all layers; None stays None."""
    key = grandom.key(0)
    sites = [site_key(key, s) for s in MODEL_TAGS]
    sites += [site_key(key, s, layer) for layer in range(12) for s in BLOCK_TAGS]
    assert len({int(k) for k in sites}) == len(sites) == 2 + 12 * 3
    assert site_key(None, "embd") is None and site_key(None, "mlp_resid", 3) is None


def test_sequences_longer_than_n_ctx_are_rejected():
    cfg = gpt1f.Config.tiny(n_ctx=8)
    params = gpt1f.init_params(cfg, seed=0)
    with pytest.raises(ValueError, match="n_ctx"):
        gpt1f.transformer(params, torch.zeros(1, 9, dtype=torch.long), cfg=cfg)


# ---------------------------------------------------------------------------------------------
# torch.func and torch.compile


def test_func_grad_equals_autograd_float64():
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg), make_batch(cfg)
    key = grandom.key(0)
    grads = torch.func.grad(gpt1f.loss_fn)(params, batch, cfg=cfg, key=key, train=True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    gpt1f.loss_fn(leaves, batch, cfg=cfg, key=key, train=True).backward()
    assert set(grads) == set(params)
    for name in params:
        torch.testing.assert_close(grads[name], leaves[name].grad, rtol=1e-12, atol=1e-14)
    # softmax over choices is blind to a bias shared by all choices: its gradient is zero
    assert abs(grads["model/clf/b:0"].item()) < 1e-12
    assert all(torch.count_nonzero(g) > 0 for k, g in grads.items() if k != "model/clf/b:0")


def test_gradients_match_finite_differences():
    cfg = gpt1f.Config.tiny(n_layer=1)
    params, batch = perturbed_params(cfg), make_batch(cfg, n_batch=2, t=8)
    key = grandom.key(1)
    f = lambda p: gpt1f.loss_fn(p, batch, cfg=cfg, key=key, train=True)  # noqa: E731
    grads = torch.func.grad(f)(params)
    gen = torch.Generator().manual_seed(0)
    for name in ("model/h0/attn/c_attn/w:0", "model/h0/ln_1/g:0", "model/clf/w:0", "model/we:0"):
        direction = torch.randn(params[name].shape, generator=gen, dtype=torch.float64)
        eps = 1e-6
        plus = f({**params, name: params[name] + eps * direction})
        minus = f({**params, name: params[name] - eps * direction})
        numeric = (plus - minus) / (2 * eps)
        torch.testing.assert_close(numeric, (grads[name] * direction).sum(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("train", [True, False])
def test_vmap_per_example_gradients_equal_a_loop(train):
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg), make_batch(cfg, n_batch=4)
    keys = grandom.split(grandom.key(5), 4)

    def example_loss(p, tokens, mask, label, key):
        one = {"tokens": tokens[None], "mask": mask[None], "label": label[None]}
        return gpt1f.loss_fn(p, one, cfg=cfg, key=key, train=train)

    per_example = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0, 0, 0, 0))(
        params, batch["tokens"], batch["mask"], batch["label"], keys)
    for i in range(4):
        single = torch.func.grad(example_loss)(params, batch["tokens"][i], batch["mask"][i],
                                               batch["label"][i], keys[i])
        for name in params:
            torch.testing.assert_close(per_example[name][i], single[name], rtol=1e-10, atol=1e-12)


def test_vmap_over_keys_gives_each_key_its_own_masks():
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg), make_batch(cfg)
    keys = grandom.split(grandom.key(0), 3)
    losses = torch.func.vmap(lambda k: gpt1f.loss_fn(params, batch, cfg=cfg, key=k, train=True))(keys)
    loop = torch.stack([gpt1f.loss_fn(params, batch, cfg=cfg, key=k, train=True) for k in keys])
    torch.testing.assert_close(losses, loop, rtol=1e-12, atol=1e-12)
    assert len(set(losses.tolist())) == 3


def test_compiled_training_gradients_match_eager_without_recompiling():
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    cfg = gpt1f.Config.tiny()
    params = perturbed_params(cfg, dtype=torch.float32)
    grad_fn = torch.func.grad_and_value(gpt1f.loss_fn)

    def step(p, batch, key):
        return grad_fn(p, batch, cfg=cfg, key=key, train=True)

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for i in range(3):
        batch = make_batch(cfg, seed=i)
        batch["mask"] = batch["mask"].float()
        key = grandom.key(i)
        (g_c, l_c), (g_e, l_e) = compiled(params, batch, key), step(params, batch, key)
        torch.testing.assert_close(l_c, l_e, rtol=1e-5, atol=1e-6)
        for name in params:
            torch.testing.assert_close(g_c[name], g_e[name], rtol=1e-4, atol=1e-6)
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} graphs for 3 calls"


def test_compiled_dropout_masks_equal_eager_bit_for_bit():
    torch._dynamo.reset()
    f = lambda k: grandom.uniform(k, (3, 33, 77))  # noqa: E731
    compiled = torch.compile(f, fullgraph=True)
    for seed in (0, 1, 2**31 + 5):
        k = grandom.key(seed)
        assert torch.equal(compiled(k), f(k))


def test_einops_head_split_and_merge_vmap_and_compile_in_one_graph():
    """The einops patterns equal the reshape/transpose they state, under vmap and fullgraph compile."""
    from gpt1f.layers import merge_heads, split_heads
    torch._dynamo.reset()
    x = torch.randn(3, 5, 7, 4 * 6)                                        # [B, N, T, H*D]
    expected = x.view(3, 5, 7, 4, 6).transpose(-3, -2)                    # [B, N, H, T, D]
    assert torch.equal(split_heads(x, 4), expected)
    assert torch.equal(torch.func.vmap(lambda row: split_heads(row, 4))(x), expected)
    round_trip = torch.compile(lambda t: merge_heads(split_heads(t, 4) * 2), fullgraph=True,
                               backend="eager")
    assert torch.equal(round_trip(x), x * 2)
    assert torch.equal(torch.func.vmap(round_trip)(x), x * 2)
