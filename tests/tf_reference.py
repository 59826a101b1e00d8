"""A line-by-line numpy transcription of TF ``model()`` from openai/finetune-transformer-lm.

Written independently of gpt1f's code from the TF maths, float64 throughout. ``drop`` is a callback
``drop(where, x, p, noise_shape) -> x`` so a test can inject dropout masks at exactly the places
TF draws them; ``None`` means eval (no dropout).
"""
import math

import numpy as np


def norm(x, g, b, e=1e-5):
    u = np.mean(x, axis=-1, keepdims=True)
    s = np.mean(np.square(x - u), axis=-1, keepdims=True)
    x = (x - u) / np.sqrt(s + e)
    return x * g + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * np.power(x, 3))))


ACT = {"gelu": gelu, "relu": lambda x: np.maximum(x, 0), "swish": lambda x: x / (1 + np.exp(-x))}


def conv1d(x, w, b):
    nx, nf = w.shape[1], w.shape[2]
    return (x.reshape(-1, nx) @ w.reshape(nx, nf) + b).reshape(*x.shape[:-1], nf)


def softmax(x, axis=-1):
    x = x - np.max(x, axis=axis, keepdims=True)
    ex = np.exp(x)
    return ex / np.sum(ex, axis=axis, keepdims=True)


def split_heads(x, n_head, k=False):
    b, t, e = x.shape
    x = x.reshape(b, t, n_head, e // n_head)
    return x.transpose(0, 2, 3, 1) if k else x.transpose(0, 2, 1, 3)


def merge_heads(x):
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def mask_attn_weights(w):
    n = w.shape[-1]
    b = np.tril(np.ones((n, n))).reshape(1, 1, n, n)
    return w * b + -1e9 * (1 - b)


def attn(x, p, layer, cfg, drop):
    c = conv1d(x, p[f"model/h{layer}/attn/c_attn/w:0"], p[f"model/h{layer}/attn/c_attn/b:0"])
    q, k, v = np.split(c, 3, axis=2)
    q, k, v = split_heads(q, cfg.n_head), split_heads(k, cfg.n_head, k=True), split_heads(v, cfg.n_head)
    w = q @ k
    w = w * (1.0 / math.sqrt(v.shape[-1]))
    w = softmax(mask_attn_weights(w))
    w = drop(("attn_probs", layer), w, cfg.attn_pdrop, None)
    a = merge_heads(w @ v)
    a = conv1d(a, p[f"model/h{layer}/attn/c_proj/w:0"], p[f"model/h{layer}/attn/c_proj/b:0"])
    return drop(("attn_resid", layer), a, cfg.resid_pdrop, None)


def mlp(x, p, layer, cfg, drop):
    h = ACT[cfg.afn](conv1d(x, p[f"model/h{layer}/mlp/c_fc/w:0"], p[f"model/h{layer}/mlp/c_fc/b:0"]))
    h2 = conv1d(h, p[f"model/h{layer}/mlp/c_proj/w:0"], p[f"model/h{layer}/mlp/c_proj/b:0"])
    return drop(("mlp_resid", layer), h2, cfg.resid_pdrop, None)


def block(x, p, layer, cfg, drop):
    a = attn(x, p, layer, cfg, drop)
    n = norm(x + a, p[f"model/h{layer}/ln_1/g:0"], p[f"model/h{layer}/ln_1/b:0"])
    m = mlp(n, p, layer, cfg, drop)
    return norm(n + m, p[f"model/h{layer}/ln_2/g:0"], p[f"model/h{layer}/ln_2/b:0"])


def sparse_softmax_xent(logits, labels):
    logp = logits - np.max(logits, axis=-1, keepdims=True)
    logp = logp - np.log(np.sum(np.exp(logp), axis=-1, keepdims=True))
    return -np.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def model(p, tokens, mask, label, cfg, drop=None):
    """TF ``model(X, M, Y)`` for ROCStories: tokens [B, 2, T] -> clf_logits, clf_losses, lm_losses, h."""
    if drop is None:
        drop = lambda where, x, rate, noise_shape: x  # noqa: E731
    n_batch, n_choice, t = tokens.shape
    we = drop(("embd", None), p["model/we:0"], cfg.embd_pdrop, None)
    X = tokens.reshape(-1, t)
    M = mask.reshape(-1, t)
    pos = cfg.n_vocab + cfg.n_special + np.arange(t)
    h = we[X] + we[pos][None]                                   # gather, then sum token + position
    for layer in range(cfg.n_layer):
        h = block(h, p, layer, cfg, drop)
    lm_h = h[:, :-1].reshape(-1, cfg.n_embd)
    lm_logits = lm_h @ we.T
    lm_losses = sparse_softmax_xent(lm_logits, X[:, 1:].reshape(-1)).reshape(X.shape[0], t - 1)
    lm_losses = np.sum(lm_losses * M[:, 1:], 1) / np.sum(M[:, 1:], 1)
    clf_h = h.reshape(-1, cfg.n_embd)
    pool_idx = np.argmax((X == cfg.clf_token).astype(np.float32), 1)
    clf_h = clf_h[np.arange(X.shape[0]) * t + pool_idx].reshape(-1, n_choice, cfg.n_embd)
    clf_h = drop(("clf", None), clf_h, cfg.clf_pdrop, (n_batch, 1, cfg.n_embd))
    clf_logits = (clf_h.reshape(-1, cfg.n_embd) @ p["model/clf/w:0"] + p["model/clf/b:0"]).reshape(-1, n_choice)
    clf_losses = sparse_softmax_xent(clf_logits, label)
    return clf_logits, clf_losses, lm_losses.reshape(n_batch, n_choice), h.reshape(n_batch, n_choice, t, -1)
