"""gpt1f against an independent numpy transcription of the TF graph (tests/tf_reference.py)."""
import numpy as np
import pytest
import torch

import gpt1f
from gpt1f import random as grandom
from gpt1f.dropout_keys import site_key
from tests import tf_reference as tf


def perturbed_params(cfg, seed=0, dtype=torch.float64):
    """Random params with gains and biases moved off 1 and 0, so every variable matters."""
    params = gpt1f.init_params(cfg, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for name, value in params.items():
        if name.endswith(("/b:0", "/g:0")):
            value = value + 0.1 * torch.randn(value.shape, generator=gen, dtype=dtype)
        out[name] = value
    return out


def make_batch(cfg, n_batch=3, n_choice=2, t=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.n_vocab, (n_batch, n_choice, t), generator=gen)
    lengths = torch.randint(4, t + 1, (n_batch, n_choice), generator=gen)
    ar = torch.arange(t)
    mask = (ar < lengths[..., None]).double()
    tokens = torch.where(ar == lengths[..., None] - 1, cfg.clf_token, tokens * mask.long())
    tokens[..., 0] = cfg.n_vocab                                  # _start_
    label = torch.randint(0, n_choice, (n_batch,), generator=gen)
    return {"tokens": tokens, "mask": mask, "label": label}


def numpy_params(params):
    return {k: v.detach().double().numpy() for k, v in params.items()}


def injected_dropout(key, cfg):
    """Masks drawn from gpt1f's key layout (``gpt1f.dropout_keys``), placed where TF's graph calls
    dropout; tf_reference names its sites as that table does."""
    def drop(where, x, rate, noise_shape):
        if rate == 0:
            return x
        shape = x.shape if noise_shape is None else noise_shape
        site, layer = where
        keep = (grandom.uniform(site_key(key, site, layer), shape, dtype=torch.float64) >= rate).numpy()
        return x * keep / (1 - rate)
    return drop


@pytest.mark.parametrize("afn", ["gelu", "relu", "swish"])
def test_eval_forward_and_losses_match_tf_float64(afn):
    cfg = gpt1f.Config.tiny(afn=afn)
    params, batch = perturbed_params(cfg), make_batch(cfg)
    logits, clf_losses, lm_losses = gpt1f.multiple_choice(params, batch, cfg=cfg)
    hidden = gpt1f.transformer(params, batch["tokens"], cfg=cfg)
    ref = tf.model(numpy_params(params), batch["tokens"].numpy(), batch["mask"].numpy(),
                   batch["label"].numpy(), cfg)
    for ours, theirs in zip((logits, clf_losses, lm_losses, hidden), ref):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10, atol=1e-12)
    loss = gpt1f.loss_fn(params, batch, cfg=cfg, lm_coef=0.5)
    np.testing.assert_allclose(loss.item(), ref[1].mean() + 0.5 * ref[2].mean(), rtol=1e-12)


def test_training_forward_with_dropout_matches_tf_placement():
    """Same masks injected at TF's dropout sites give the same losses: placement is TF's."""
    cfg = gpt1f.Config.tiny(embd_pdrop=0.2, attn_pdrop=0.3, resid_pdrop=0.25, clf_pdrop=0.4)
    params, batch = perturbed_params(cfg), make_batch(cfg)
    key = grandom.key(7)
    logits, clf_losses, lm_losses = gpt1f.multiple_choice(params, batch, cfg=cfg, key=key, train=True)
    ref = tf.model(numpy_params(params), batch["tokens"].numpy(), batch["mask"].numpy(),
                   batch["label"].numpy(), cfg, drop=injected_dropout(key, cfg))
    for ours, theirs in zip((logits, clf_losses, lm_losses), ref):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10, atol=1e-12)
    eval_logits = gpt1f.multiple_choice(params, batch, cfg=cfg)[0]
    assert not torch.allclose(logits, eval_logits)  # dropout really acted


def test_float32_matches_tf_within_stated_tolerance():
    cfg = gpt1f.Config.tiny()
    params64, batch = perturbed_params(cfg), make_batch(cfg)
    params32 = {k: v.float() for k, v in params64.items()}
    batch32 = {**batch, "mask": batch["mask"].float()}
    logits, clf_losses, lm_losses = gpt1f.multiple_choice(params32, batch32, cfg=cfg)
    ref = tf.model(numpy_params(params64), batch["tokens"].numpy(), batch["mask"].numpy(),
                   batch["label"].numpy(), cfg)
    for ours, theirs in zip((logits, clf_losses, lm_losses), ref):
        np.testing.assert_allclose(ours.double().numpy(), theirs, rtol=1e-4, atol=1e-5)


def test_lm_logits_cover_every_row_of_we():
    cfg = gpt1f.Config.tiny()
    params, batch = perturbed_params(cfg), make_batch(cfg)
    hidden = gpt1f.transformer(params, batch["tokens"], cfg=cfg)
    logits = gpt1f.lm_logits(params, hidden, cfg=cfg)
    assert logits.shape == (*hidden.shape[:-1], cfg.n_rows)
    expected = hidden.numpy() @ params["model/we:0"].numpy().T
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_padding_after_the_classify_token_does_not_change_the_scores():
    """Causal attention: tokens after a sequence's end cannot reach its clf state."""
    cfg = gpt1f.Config.tiny(n_ctx=16)
    params, batch = perturbed_params(cfg), make_batch(cfg, t=12)
    longer = torch.cat([batch["tokens"], torch.randint(0, cfg.n_vocab, (3, 2, 4))], dim=-1)
    a = gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=cfg)
    b = gpt1f.multiple_choice_logits(params, longer, cfg=cfg)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
