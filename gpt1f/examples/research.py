# %% [markdown]
# # Research with transforms: a walk-through
#
# A jupytext "percent" notebook: run it as a script (`python -m gpt1f.examples.research`), or open
# it as a notebook with `jupytext --to notebook`. It uses a tiny model, so it runs in seconds on a
# CPU; swap `gpt1f.Config.tiny()` for `gpt1f.load_openai()` to do the same on the released model.
# The test suite runs this file, so it stays working.

# %%
import functools

import torch

import gpt1f
from gpt1f import dp, ensemble, lora

cfg = gpt1f.Config.tiny()
params = gpt1f.init_params(cfg, seed=0)


def story_batch(n: int, seed: int) -> dict:
    """A multiple-choice batch [n, 2 choices, 10 tokens] ending in _classify_."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.n_vocab, (n, 2, 10), generator=g)
    tokens[..., -1] = cfg.clf_token
    return {"tokens": tokens, "mask": torch.ones(n, 2, 10), "label": torch.randint(0, 2, (n,), generator=g)}


batch = story_batch(8, seed=0)
loss = functools.partial(gpt1f.loss_fn, cfg=cfg, train=True)

# %% [markdown]
# ## 1. Per-example gradients
# `vmap` of `grad`, each example with its own dropout key; `chunk_size` bounds memory.

# %%
grads = gpt1f.per_example_grads(loss, params, batch, gpt1f.random.key(0), chunk_size=4)
norms = dp.per_example_norms(grads)
print("per-example gradient norms:", [round(x, 3) for x in norms.tolist()])

# %% [markdown]
# ## 2. DP-SGD
# Poisson-sample a batch, clip each example's gradient to norm C, add N(0, (sigma C)^2) noise
# from an explicit key, divide by the expected batch size, update; Opacus's RDP accountant says
# what that cost.

# %%
train = story_batch(64, seed=1)
rate, config = 0.125, dp.DPConfig(clip=1.0, noise=1.1, expected_batch_size=0.125 * 64)
opt = gpt1f.openai_adam(1e-3, t_total=10, warmup=0.0, max_grad_norm=-1)   # DP clips instead
p, state = params, opt.init(params)
for step in range(3):
    key = gpt1f.random.fold_in(gpt1f.random.key(1), step)
    drawn = dp.poisson_sample(gpt1f.random.fold_in(key, 99), 64, rate)
    p, state, metrics = dp.dp_train_step(p, state, {k: v[drawn] for k, v in train.items()}, key,
                                         loss=loss, opt=opt, dp=config)
    print(f"update {step}: {int(metrics['n'])} examples, {float(metrics['clipped']):.0%} clipped")
try:
    print("epsilon at delta 1e-5:", round(dp.epsilon(noise=1.1, sample_rate=rate, steps=3, delta=1e-5), 3))
except ImportError as e:                      # the accountant is an optional extra
    print(e)

# %% [markdown]
# ## 3. N seeds in one step
# Stack params, optimizer states, batches and keys on a leading axis and `vmap` the train step.

# %%
n_seeds = 3
opt = gpt1f.openai_adam(6.25e-5, t_total=10, warmup=0.2)
runs = ensemble.stack([gpt1f.init_params(cfg, seed=s) for s in range(n_seeds)])
states = ensemble.stack([opt.init(gpt1f.init_params(cfg, seed=s)) for s in range(n_seeds)])
step = ensemble.make_ensemble_step(cfg, opt)
batches = ensemble.stack([story_batch(4, seed=10 + s) for s in range(n_seeds)])
keys = torch.stack([gpt1f.random.key(s) for s in range(n_seeds)])
runs, states, metrics = step(runs, states, batches, keys)
print("one loss per seed:", [round(x, 4) for x in metrics["loss"].tolist()])

# %% [markdown]
# ## 4. LoRA
# Adapters are their own dict, merged into the frozen base by a pure function; only they (and
# the new classifier head) are trained.

# %%
adapters = lora.init(params, rank=2, key=gpt1f.random.key(2))
print(f"trainable: {lora.count(adapters):,} of {gpt1f.count_params(params):,} numbers")
assert all(torch.equal(lora.apply(params, adapters)[k], params[k]) for k in params)   # b = 0
opt = gpt1f.openai_adam(1e-2, t_total=10, warmup=0.0)
state = opt.init(adapters)
step = lora.make_train_step(cfg, opt, params)
for i in range(3):
    adapters, state, metrics = step(adapters, state, batch, gpt1f.random.key(i))
print("LoRA loss after 3 updates:", round(float(metrics["loss"]), 4))
