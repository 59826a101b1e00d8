"""Bad API input gets an error naming the argument (issue 14, items 4, 6, 7, 8 and the type errors)."""
import math

import pytest
import torch

import gpt1f
from gpt1f import Config, init_params, optim
from gpt1f.fused_lm_loss import lm_loss_mean
from gpt1f.model import embedding_matrix, lm_losses
from gpt1f.train import make_train_step

CFG = Config.tiny()
PARAMS = init_params(CFG, seed=0)


def mc_batch(b=2, c=2, t=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CFG.n_vocab, (b, c, t), generator=gen)
    tokens[..., -1] = CFG.clf_token
    return {"tokens": tokens, "mask": torch.ones(b, c, t), "label": torch.arange(b) % c}


# ---------------------------------------------------------------- item 6: token id ranges

@pytest.mark.parametrize("bad", [-1, CFG.pos_offset, CFG.pos_offset + 3, CFG.n_rows, 10**6])
def test_token_ids_outside_the_token_and_special_rows_are_refused(bad):
    batch = mc_batch()
    batch["tokens"][1, 0, 3] = bad
    for call in (lambda: gpt1f.multiple_choice(PARAMS, batch, cfg=CFG),
                 lambda: gpt1f.multiple_choice_logits(PARAMS, batch["tokens"], cfg=CFG),
                 lambda: gpt1f.transformer(PARAMS, batch["tokens"], cfg=CFG),
                 lambda: gpt1f.loss_fn(PARAMS, batch, cfg=CFG)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "tokens[1, 0, 3]" in message and str(bad) in message, message


def test_token_check_stays_out_of_vmap_and_compile():
    tokens = mc_batch()["tokens"]
    expected = gpt1f.multiple_choice_logits(PARAMS, tokens, cfg=CFG)
    vmapped = torch.func.vmap(lambda t: gpt1f.multiple_choice_logits(PARAMS, t[None], cfg=CFG)[0])
    torch.testing.assert_close(vmapped(tokens), expected)


# ---------------------------------------------------------------- item 7: cfg against params

@pytest.mark.parametrize("change", [dict(n_vocab=49), dict(n_special=2), dict(n_ctx=15),
                                    dict(n_embd=64), dict(n_layer=1), dict(n_layer=3)])
def test_a_cfg_that_does_not_match_the_params_is_refused(change):
    cfg = CFG.replace(**change)
    batch = mc_batch()
    batch["tokens"].clamp_(max=cfg.n_vocab + cfg.n_special - 1)
    name = next(iter(change))
    for call in (lambda: gpt1f.multiple_choice(PARAMS, batch, cfg=cfg),
                 lambda: gpt1f.transformer(PARAMS, batch["tokens"], cfg=cfg)):
        with pytest.raises(ValueError, match=name):
            call()


# ---------------------------------------------------------------- item 8: masks and labels

@pytest.mark.parametrize("shape", [(8,), (1, 1, 8), (2, 2, 7)])
def test_one_mask_contract_for_the_plain_and_fused_lm_loss(shape):
    batch = mc_batch()
    hidden = gpt1f.transformer(PARAMS, batch["tokens"], cfg=CFG)
    we = embedding_matrix(PARAMS, cfg=CFG)
    mask = torch.ones(shape)
    for loss in (lm_losses, lm_loss_mean):
        with pytest.raises(ValueError, match="mask"):
            loss(we, hidden, batch["tokens"], mask)
    batch["mask"] = mask
    for fused in (False, True):
        with pytest.raises(ValueError, match="mask"):
            gpt1f.loss_fn(PARAMS, batch, cfg=CFG, fused_lm=fused)


@pytest.mark.parametrize("label", [-100, -1, 2])
def test_multiple_choice_labels_must_name_a_choice(label):
    batch = mc_batch()
    batch["label"][1] = label
    with pytest.raises(ValueError, match=rf"label\[1\].*{label}.*2 choices"):
        gpt1f.loss_fn(PARAMS, batch, cfg=CFG)


def test_classify_labels_must_name_a_class():
    params = init_params(CFG, seed=0, n_class=3)
    tokens = mc_batch()["tokens"][:, 0]
    batch = {"tokens": tokens, "mask": torch.ones(tokens.shape), "label": torch.tensor([0, 3])}
    with pytest.raises(ValueError, match=r"label\[1\].*3.*3 classes"):
        gpt1f.loss_fn(params, batch, cfg=CFG, head="classify")
    batch["label"] = torch.tensor([-100, 2])
    with pytest.raises(ValueError, match=r"label\[0\].*-100"):
        gpt1f.classify(params, batch, cfg=CFG)


# ---------------------------------------------------------------- type errors name the argument

@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_tokens_of_the_wrong_dtype(dtype):
    batch = mc_batch()
    batch["tokens"] = batch["tokens"].to(dtype)
    with pytest.raises(TypeError, match=r"tokens.*int64"):
        gpt1f.loss_fn(PARAMS, batch, cfg=CFG)
    with pytest.raises(TypeError, match=r"tokens.*int64"):
        gpt1f.transformer(PARAMS, batch["tokens"], cfg=CFG)


def test_float_labels_for_a_choice_head():
    batch = mc_batch()
    batch["label"] = batch["label"].float()
    with pytest.raises(TypeError, match=r"label.*int64"):
        gpt1f.loss_fn(PARAMS, batch, cfg=CFG)


@pytest.mark.parametrize("key", [torch.tensor(1.5), 7, torch.tensor(3, dtype=torch.int64)])
def test_keys_that_are_not_gpt1f_keys(key):
    with pytest.raises(TypeError, match=r"key.*gpt1f.random.key"):
        gpt1f.loss_fn(PARAMS, mc_batch(), cfg=CFG, key=key, train=True)


def test_tokens_of_the_wrong_rank_for_the_head():
    batch = mc_batch()
    batch["tokens"], batch["mask"] = batch["tokens"][:, 0], batch["mask"][:, 0]
    with pytest.raises(ValueError, match=r"tokens.*\[batch, choices, time\]"):
        gpt1f.multiple_choice(PARAMS, batch, cfg=CFG)
    with pytest.raises(ValueError, match=r"tokens.*\[batch, choices, time\]"):
        gpt1f.multiple_choice_logits(PARAMS, batch["tokens"], cfg=CFG)


def test_train_step_checks_its_batch():
    opt = optim.openai_adam(1e-3, t_total=10)
    step = make_train_step(CFG, opt, lm_coef=0.5)
    state = opt.init(PARAMS)
    batch = mc_batch()
    batch["tokens"][0, 1, 2] = CFG.n_rows - 1
    with pytest.raises(ValueError, match=r"tokens\[0, 1, 2\]"):
        step(PARAMS, state, batch, gpt1f.random.key(0))
    with pytest.raises(ValueError, match="lm_coef"):
        make_train_step(CFG, opt, lm_coef=-1.0)


# ---------------------------------------------------------------- item 4 and 10: the optimizer

@pytest.mark.parametrize("name, value", [("lr", math.inf), ("lr", 1e39), ("lr", math.nan),
                                         ("max_grad_norm", math.nan), ("e", math.inf),
                                         ("l2", math.nan), ("warmup", math.inf),
                                         ("t_total", math.inf)])
def test_non_finite_hyper_parameters_are_refused(name, value):
    kwargs = {"t_total": 10, name: value}
    with pytest.raises(ValueError, match=name):
        optim.openai_adam(**kwargs)


@pytest.mark.parametrize("inplace", [False, True])
def test_an_update_that_would_make_params_non_finite_is_skipped(inplace):
    """Each step moves a parameter by about lr (3e38); the second would overflow float32."""
    params = {k: v.clone() for k, v in PARAMS.items()}
    opt = optim.openai_adam(3e38, schedule="warmup_constant", warmup=0.0, t_total=10,
                            max_grad_norm=0, l2=0.0)
    state = opt.init(params)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    update = opt.update_ if inplace else opt.update
    params, state = update(grads, state, params)
    first = {k: v.clone() for k, v in params.items()}
    assert all(torch.isfinite(p).all() for p in first.values())
    params, state = update(grads, state, params)
    assert all(torch.isfinite(p).all() for p in params.values())
    for k in first:
        assert torch.equal(params[k], first[k]), k
    assert int(state.skipped) == 1 and int(state.count) == 1


def test_the_train_step_reports_an_update_skipped_for_non_finite_params():
    """A huge (unused) position row decays past float32's range under lr 1e4; the step skips it."""
    params = {k: v.clone() for k, v in PARAMS.items()}
    params["model/we:0"][-1] = 3e38                 # position 15: a batch of 8 positions never reads it
    opt = optim.openai_adam(1e4, schedule="warmup_constant", warmup=0.0, t_total=10)
    step = make_train_step(CFG, opt, lm_coef=0.0)
    new, state, metrics = step(params, opt.init(params), mc_batch(), gpt1f.random.key(0))
    assert int(metrics["nonfinite"]) == 1 and int(state.skipped) == 1
    assert all(torch.equal(new[k], params[k]) for k in params)
