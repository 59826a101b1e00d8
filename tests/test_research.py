"""The research transforms: normal draws, per-example gradients, DP-SGD, seed ensembles, LoRA."""
import functools
import math

import numpy as np
import pytest
import torch

import gpt1f
from gpt1f import dp, lora
from gpt1f.ensemble import make_ensemble_step, stack, unstack
from gpt1f.layers import conv1d
from gpt1f.per_example import per_example_grads

F64 = torch.float64
NO_DROPOUT = dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, clf_pdrop=0.0)


def mc_batch(cfg, n=4, t=10, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.n_vocab, (n, 2, t), generator=g)
    tokens[..., -1] = cfg.clf_token
    return {"tokens": tokens, "mask": torch.ones(n, 2, t, dtype=dtype),
            "label": torch.randint(0, 2, (n,), generator=g)}


def example(batch, i):
    return {k: v[i:i + 1] for k, v in batch.items()}


# ------------------------------------------------------------------------------- random.normal

def test_normal_is_a_pure_function_of_key_and_index():
    k = gpt1f.random.key(0)
    a, b = gpt1f.random.normal(k, (1000,)), gpt1f.random.normal(k, (1000,))
    assert torch.equal(a, b)
    assert not torch.equal(a, gpt1f.random.normal(gpt1f.random.key(1), (1000,)))
    keys = gpt1f.random.split(k, 3)
    batched = torch.func.vmap(lambda key: gpt1f.random.normal(key, (5, 7)))(keys)
    assert all(torch.equal(batched[i], gpt1f.random.normal(keys[i], (5, 7))) for i in range(3))
    compiled = torch.compile(lambda key: gpt1f.random.normal(key, (64,)), fullgraph=True,
                             backend="aot_eager")
    assert torch.equal(compiled(k), gpt1f.random.normal(k, (64,)))


def test_normal_has_mean_zero_and_unit_spread():
    """200k draws with a fixed key: mean within 5 standard errors of 0, variance of 1, and the
    two-sided tail mass beyond 1.96 near 5% (binomial, 5 standard errors)."""
    x = gpt1f.random.normal(gpt1f.random.key(7), (200_000,), F64)
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    tail = (x.abs() > 1.959964).double().mean().item()
    assert abs(tail - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)


# ------------------------------------------------------------------------------- per-example

@pytest.mark.parametrize("fused_lm", [False, True])
def test_per_example_grads_equal_a_loop_over_examples_with_their_keys(fused_lm):
    cfg = gpt1f.Config.tiny()
    params = gpt1f.init_params(cfg, seed=0, dtype=F64)
    batch = mc_batch(cfg, dtype=F64)
    loss = functools.partial(gpt1f.loss_fn, cfg=cfg, train=True, fused_lm=fused_lm)
    key = gpt1f.random.key(3)
    grads = per_example_grads(loss, params, batch, key, chunk_size=3)
    keys = gpt1f.random.split(key, 4)
    for i in range(4):
        one = torch.func.grad(loss)(params, example(batch, i), key=keys[i])
        for k in params:
            torch.testing.assert_close(grads[k][i], one[k], rtol=1e-12, atol=1e-15, msg=k)
    assert grads["model/we:0"].shape == (4, *params["model/we:0"].shape)
    assert not torch.equal(grads["model/clf/w:0"][0], grads["model/clf/w:0"][1])


def test_per_example_grads_bad_input():
    cfg = gpt1f.Config.tiny()
    params = gpt1f.init_params(cfg, seed=0)
    batch = mc_batch(cfg)
    loss = functools.partial(gpt1f.loss_fn, cfg=cfg)
    with pytest.raises(ValueError, match="chunk_size"):
        per_example_grads(loss, params, batch, chunk_size=0)
    with pytest.raises(ValueError, match="leading"):
        per_example_grads(loss, params, {**batch, "label": batch["label"][:3]})


# ------------------------------------------------------------------------------- DP-SGD

def test_clipping_bounds_every_examples_global_norm():
    g = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(6, 3, 4, generator=g, dtype=F64) * torch.arange(1, 7).view(6, 1, 1),
             "b": torch.randn(6, 5, generator=g, dtype=F64)}
    clipped, norms = dp.clip_per_example(grads, 2.0)
    after = dp.per_example_norms(clipped)
    assert (norms > 2.0).sum() >= 3                      # most examples are clipped
    assert torch.all(after <= 2.0 + 1e-12)
    small = norms <= 2.0
    torch.testing.assert_close(after[small], norms[small])   # small ones untouched
    torch.testing.assert_close(after[~small], torch.full_like(after[~small], 2.0))


def test_noise_has_the_right_mean_and_spread():
    """Zero gradients: the private mean is noise alone, N(0, (sigma C / m)^2) per element."""
    zeros = {"w": torch.zeros(3, 400, 100, dtype=F64), "b": torch.zeros(3, 1000, dtype=F64)}
    config = dp.DPConfig(clip=0.5, noise=1.3, expected_batch_size=4.0)
    grads, _ = dp.private_grads(zeros, gpt1f.random.key(11), config)
    x = torch.cat([g.flatten() for g in grads.values()])
    std = config.noise * config.clip / config.expected_batch_size
    n = x.numel()
    assert abs(x.mean().item()) < 5 * std / math.sqrt(n)
    assert abs(x.std().item() / std - 1) < 5 / math.sqrt(2 * n)
    again, _ = dp.private_grads(zeros, gpt1f.random.key(11), config)
    assert all(torch.equal(again[k], grads[k]) for k in grads)       # same key, same noise
    other, _ = dp.private_grads(zeros, gpt1f.random.key(12), config)
    assert not torch.equal(other["w"], grads["w"])
    assert not torch.equal(grads["w"].flatten()[:1000], grads["b"])  # tensors draw apart


def test_without_noise_and_with_a_large_clip_the_update_is_the_plain_one():
    cfg = gpt1f.Config.tiny(**NO_DROPOUT)
    params = gpt1f.init_params(cfg, seed=0, dtype=F64)
    batch = mc_batch(cfg, dtype=F64)
    loss = functools.partial(gpt1f.loss_fn, cfg=cfg, train=True)
    opt = gpt1f.openai_adam(1e-2, t_total=10, warmup=0.0, max_grad_norm=-1)
    private, _, metrics = dp.dp_train_step(
        params, opt.init(params), batch, gpt1f.random.key(0), loss=loss, opt=opt,
        dp=dp.DPConfig(clip=1e6, noise=0.0, expected_batch_size=4))
    plain, _ = opt.update(torch.func.grad(loss)(params, batch, key=gpt1f.random.key(0)),
                          opt.init(params), params)
    for k in params:
        if k == "model/clf/b:0":    # its gradient is 0 by symmetry: Adam scales rounding noise
            assert (private[k] - params[k]).abs().max() <= 1e-2 * (1 + 1e-9)   # to at most lr
            continue
        torch.testing.assert_close(private[k], plain[k], rtol=1e-12, atol=1e-14, msg=k)
    assert metrics["clipped"].item() == 0 and metrics["n"].item() == 4
    batch_loss = loss(params, batch, key=gpt1f.random.key(0))      # no dropout: keys do not matter
    assert metrics["loss"].item() == pytest.approx(batch_loss.item(), rel=1e-12)


def test_dp_step_refuses_optimizer_clipping_and_takes_an_empty_batch():
    cfg = gpt1f.Config.tiny()
    params = gpt1f.init_params(cfg, seed=0)
    loss = functools.partial(gpt1f.loss_fn, cfg=cfg, train=True)
    config = dp.DPConfig(clip=1.0, noise=1.0, expected_batch_size=2)
    clipping = gpt1f.openai_adam(t_total=10)
    with pytest.raises(ValueError, match="max_grad_norm"):
        dp.dp_train_step(params, clipping.init(params), mc_batch(cfg), gpt1f.random.key(0),
                         loss=loss, opt=clipping, dp=config)
    opt = gpt1f.openai_adam(1e-3, t_total=10, max_grad_norm=-1)
    empty = {k: v[:0] for k, v in mc_batch(cfg).items()}
    new, state, metrics = dp.dp_train_step(params, opt.init(params), empty, gpt1f.random.key(0),
                                           loss=loss, opt=opt, dp=config)
    assert metrics["n"].item() == 0 and state.count.item() == 1
    assert not torch.equal(new["model/clf/w:0"], params["model/clf/w:0"])   # noise moved it
    with pytest.raises(ValueError, match="clip"):
        dp.DPConfig(clip=float("nan"), noise=1.0, expected_batch_size=2).check()


def test_poisson_sampling_rate_and_determinism():
    key = gpt1f.random.key(5)
    drawn = dp.poisson_sample(key, 100_000, 0.03)
    n, q = 100_000, 0.03
    assert abs(len(drawn) - n * q) < 5 * math.sqrt(n * q * (1 - q))
    assert torch.equal(drawn, dp.poisson_sample(key, n, q))
    assert torch.all(drawn[1:] > drawn[:-1])
    with pytest.raises(ValueError, match="sample_rate"):
        dp.poisson_sample(key, 10, 0.0)


def test_accountant_matches_opacus_documented_example():
    """Opacus's own accountant test: sigma 1.5, q 0.04, 90 epochs (2250 steps), delta 1e-5."""
    pytest.importorskip("opacus")
    eps = dp.epsilon(noise=1.5, sample_rate=0.04, steps=int(90 / 0.04), delta=1e-5)
    assert eps == pytest.approx(7.32911117143, rel=1e-9)
    sigma = dp.noise_for_epsilon(target_epsilon=8.0, delta=1e-5, sample_rate=0.04, steps=2250)
    assert 1.3 < sigma < 1.5
    spent = dp.epsilon(noise=sigma, sample_rate=0.04, steps=2250, delta=1e-5)
    assert 7.9 < spent <= 8.0
    assert dp.epsilon(noise=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0


# ------------------------------------------------------------------------------- ensembles

def separate_and_vmapped(dtype, n_runs=2, updates=3):
    cfg = gpt1f.Config.tiny()
    opt = gpt1f.openai_adam(6.25e-5, t_total=10, warmup=0.2)
    runs = [gpt1f.init_params(cfg, seed=s, dtype=dtype) for s in range(n_runs)]
    states = [opt.init(p) for p in runs]
    stacked = (stack(runs), stack(states))
    step = make_ensemble_step(cfg, opt, accum=2)
    keys = [gpt1f.random.key(s) for s in range(n_runs)]
    for u in range(updates):
        batches = [mc_batch(cfg, seed=10 * u + s, dtype=dtype) for s in range(n_runs)]
        step_keys = [gpt1f.random.fold_in(k, u) for k in keys]
        *stacked, metrics = step(*stacked, stack(batches), torch.stack(step_keys))
        for i in range(n_runs):
            runs[i], states[i], m = gpt1f.train_step(runs[i], states[i], batches[i], step_keys[i],
                                                     cfg=cfg, opt=opt, accum=2)
            assert metrics["loss"][i].item() == pytest.approx(m["loss"].item(), rel=1e-5)
    return runs, states, unstack(tuple(stacked))


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-12), (torch.float32, 1e-6)])
def test_vmapped_seeds_equal_separate_runs(dtype, tol):
    """Every run of the ensemble equals its own run after 3 updates. ``clf/b`` is left to its own
    bound: its true gradient is 0 (a constant shift of every choice's logit), so each run's
    update there is Adam's normalisation of rounding noise, at most about lr per update."""
    runs, states, together = separate_and_vmapped(dtype)
    for (p, s), alone, alone_state in zip(together, runs, states):
        for k in p:
            if k == "model/clf/b:0":
                assert (p[k] - alone[k]).abs().max() <= 3 * 2 * 6.25e-5
                continue
            torch.testing.assert_close(p[k], alone[k], rtol=0, atol=tol, msg=k)
        assert torch.equal(s.count, alone_state.count)
    assert not torch.equal(together[0][0]["model/we:0"], together[1][0]["model/we:0"])


def test_stack_unstack_and_bad_input():
    cfg = gpt1f.Config.tiny()
    trees = [gpt1f.init_params(cfg, seed=s) for s in range(2)]
    back = unstack(stack(trees))
    assert all(torch.equal(back[i][k], trees[i][k]) for i in range(2) for k in trees[0])
    with pytest.raises(ValueError, match="inplace"):
        make_ensemble_step(cfg, gpt1f.openai_adam(t_total=1), inplace=True)
    with pytest.raises(ValueError, match="leading"):
        unstack({"a": torch.zeros(2, 3), "b": torch.zeros(3)})


# ------------------------------------------------------------------------------- LoRA

def lora_setup(dtype=F64, rank=2, targets=lora.DEFAULT_TARGETS):
    cfg = gpt1f.Config.tiny(**NO_DROPOUT)
    base = gpt1f.init_params(cfg, seed=0, dtype=dtype)
    adapters = lora.init(base, rank=rank, targets=targets, key=gpt1f.random.key(1))
    return cfg, base, adapters


def test_lora_at_init_changes_nothing_and_keys_follow_tf_names():
    cfg, base, adapters = lora_setup()
    assert "model/h1/attn/c_attn/lora_a:0" in adapters
    assert adapters["model/h1/attn/c_attn/lora_a:0"].shape == (1, 32, 2)
    assert adapters["model/h1/attn/c_attn/lora_b:0"].shape == (1, 2, 96)
    merged = lora.apply(base, adapters)
    assert all(torch.equal(merged[k], base[k]) for k in base)
    tokens = mc_batch(cfg)["tokens"]
    assert torch.equal(gpt1f.transformer(merged, tokens, cfg=cfg),
                       gpt1f.transformer(base, tokens, cfg=cfg))
    full = lora.init(base, rank=2, targets=lora.TARGETS, key=gpt1f.random.key(1), train_head=False)
    assert len(full) == 2 * 4 * cfg.n_layer and lora.count(full) < gpt1f.count_params(base)


def test_merged_equals_unmerged():
    """conv1d with the merged weight equals the base conv1d plus the low-rank path."""
    cfg, base, adapters = lora_setup()
    g = torch.Generator().manual_seed(2)
    adapters = {k: torch.randn(v.shape, generator=g, dtype=F64) if "lora_b" in k else v
                for k, v in adapters.items()}
    merged = lora.apply(base, adapters, scale=0.5)
    x = torch.randn(3, 7, cfg.n_embd, generator=g, dtype=F64)
    name = "model/h0/attn/c_attn/"
    low_rank = (x @ adapters[name + "lora_a:0"][0]) @ adapters[name + "lora_b:0"][0]
    unmerged = conv1d(x, base[name + "w:0"], base[name + "b:0"]) + 0.5 * low_rank
    torch.testing.assert_close(conv1d(x, merged[name + "w:0"], base[name + "b:0"]), unmerged,
                               rtol=1e-12, atol=1e-12)


def test_lora_training_changes_only_adapters_and_the_head():
    cfg, base, adapters = lora_setup(torch.float32)
    snapshot = {k: v.clone() for k, v in base.items()}
    opt = gpt1f.openai_adam(1e-2, t_total=10, warmup=0.0)
    state = opt.init(adapters)
    step = lora.make_train_step(cfg, opt, base, lm_coef=0.5, accum=2)
    batch = mc_batch(cfg)
    for i in range(3):
        adapters, state, metrics = step(adapters, state, batch, gpt1f.random.key(i))
    assert all(torch.equal(base[k], snapshot[k]) for k in base)          # the base is frozen
    merged = lora.apply(base, adapters)
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    expected = set(lora.targeted_weights(base)) | set(lora.HEAD)
    assert changed == expected
    assert state.mu.keys() == adapters.keys()


def test_lora_composes_with_vmap_per_example_grads():
    cfg, base, adapters = lora_setup()
    batch = mc_batch(cfg, dtype=F64)

    def loss(ad, b, key=None):
        return gpt1f.loss_fn(lora.apply(base, ad), b, cfg=cfg)

    grads = per_example_grads(loss, adapters, batch)
    for i in range(4):
        one = torch.func.grad(loss)(adapters, example(batch, i))
        for k in adapters:
            torch.testing.assert_close(grads[k][i], one[k], rtol=1e-12, atol=1e-15, msg=k)
    assert grads["model/h0/attn/c_attn/lora_b:0"].abs().max() > 0   # b receives gradient at init


def test_lora_save_load_round_trip_and_errors(tmp_path):
    pytest.importorskip("safetensors")
    _, base, adapters = lora_setup(torch.float32)
    lora.save(adapters, tmp_path / "ad", rank=2, targets=lora.DEFAULT_TARGETS, scale=0.5)
    loaded, config = lora.load(tmp_path / "ad")
    assert config["rank"] == 2 and config["scale"] == 0.5
    assert loaded.keys() == adapters.keys()
    assert all(torch.equal(loaded[k], adapters[k]) for k in adapters)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="rank"):
        lora.init(base, rank=0, key=gpt1f.random.key(0))
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        lora.init(base, rank=2, targets=("attn/q",), key=gpt1f.random.key(0))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        lora.apply(base, {"model/h0/attn/c_attn/w:0": base["model/h0/attn/c_attn/w:0"]})
    np.testing.assert_equal(lora.count(adapters), sum(v.numel() for v in adapters.values()))


def test_the_walk_through_runs_as_a_module():
    """gpt1f/examples/research.py (a jupytext percent notebook) runs top to bottom."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "gpt1f.examples.research"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("per-example gradient norms:", "epsilon at delta 1e-5:", "one loss per seed:",
                 "LoRA loss after 3 updates:"):
        assert line in done.stdout, done.stdout
