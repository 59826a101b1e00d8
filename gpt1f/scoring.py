"""Log-likelihoods of given text under GPT-1's language model: perplexity, zero-shot choices.

The softmax runs over the token rows of ``we`` only (the special rows too with
``allow_special``), the distribution ``generate`` draws from, not over the position rows the TF
training loss also normalises over. The paper's zero-shot heuristics (section 5) compare such
scores: for the Story Cloze test, the ending with the higher average log-probability given the
story.
"""
from __future__ import annotations

import torch

from .config import Config
from .model import transformer
from .sampling import choice_logits, n_choices


def check_score_inputs(tokens, mask, cfg: Config, allow_special: bool) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int32, torch.int64) \
            or tokens.dim() < 1:
        raise ValueError("tokens must be an integer tensor [..., T]")
    if not isinstance(mask, torch.Tensor) or mask.shape != tokens.shape:
        got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of the tokens' shape {list(tokens.shape)}, got {got}")
    if torch.compiler.is_compiling() or tokens.numel() == 0:
        return
    if tokens.min() < 0 or tokens.max() >= cfg.pos_offset:
        raise ValueError(f"tokens hold ids outside 0 .. {cfg.pos_offset - 1} (tokens and special "
                         f"tokens; rows from {cfg.pos_offset} on are positions)")
    n = n_choices(cfg, allow_special)
    scored = tokens[..., 1:][mask[..., 1:] != 0]
    if scored.numel() and scored.max() >= n:
        raise ValueError(f"tokens scored by mask include special ids (>= {n}), which have no "
                         "probability unless allow_special=True")


def score(params, tokens: torch.Tensor, mask: torch.Tensor, *, cfg: Config,
          allow_special: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token and per-sequence log-likelihoods.

    ``token_logprobs[..., t] = mask[..., t + 1] * log p(tokens[..., t + 1] | tokens[..., :t + 1])``
    (natural log), 0 where the mask is 0, and ``seq_logprob`` its sum over ``t``. The mask follows
    ``lm_losses``: ``mask[..., 0]`` is never used, since the first token has no context.

    tokens [..., T] int64, mask [..., T] -> (token_logprobs [..., T-1], seq_logprob [...])
    """
    check_score_inputs(tokens, mask, cfg, allow_special)
    hidden = transformer(params, tokens, cfg=cfg)
    logits = choice_logits(params, hidden[..., :-1, :], cfg=cfg, allow_special=allow_special)
    logprobs = torch.log_softmax(logits, dim=-1)                         # [..., T-1, V]
    target = tokens[..., 1:]
    lp = logprobs.gather(-1, target.clamp(max=logits.shape[-1] - 1)[..., None])[..., 0]
    m = mask[..., 1:].to(lp.dtype)
    token_logprobs = torch.where(m != 0, lp * m, torch.zeros_like(lp))
    return token_logprobs, token_logprobs.sum(-1)
