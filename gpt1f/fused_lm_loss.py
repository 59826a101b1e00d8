"""The training LM loss without the ``[tokens, n_rows]`` logits: value and gradients in one pass.

``lm_loss_mean(we, hidden, tokens, mask)`` equals ``gpt1f.model.lm_losses(...).mean()`` (TF's
``mean over sequences of the masked mean over positions``) and has the same gradients with respect
to ``we`` and ``hidden``, up to float rounding. It differs in how it gets there:

- only positions whose target is unmasked enter the tied LM head (on CPU; a CUDA step keeps every
  position, weighted, so that nothing syncs with the host);
- the logits exist one chunk of ``chunk_rows`` positions at a time, never whole, in one buffer
  that, as the gradient of ``we``, is kept for the next call on CPU (``gpt1f.scratch``);
- on CPU a chunk's head runs through the vocabulary in slices of ``vocab_rows``: each slice's
  softmax work happens while its logits are still in cache;
- the gradient of the mean loss is formed in the same pass as its value (the softmax of a chunk
  is its gradient up to the target's ``-1``), so backward needs no second pass over the logits and
  the head costs ``6 V E`` FLOPs per kept position, as a plain forward and backward would.

The gradients are attached with a surrogate: ``loss + (s - s.detach())`` with
``s = <we, dL/dwe> + <hidden, dL/dhidden>`` (two dot products) has the loss's value and, by the chain rule, its
gradient. It is plain tensor algebra around one opaque op, so ``torch.func.grad``, ``vmap`` (the
op loops over the vmapped axis) and ``torch.compile(fullgraph=True)`` all see through it. The price
of computing gradients eagerly is paid even when only the value is wanted: use ``lm_losses`` for
evaluation. The mask is data: no gradient flows to it.
"""
from __future__ import annotations

import torch

from . import scratch
from .checks import check_mask

DEFAULT_CHUNK_ROWS = 512   # [512, 40558] fp32 logits: 83 MB per chunk
CPU_VOCAB_ROWS = 1024      # a [1024, 512] fp32 slice of them (2 MB) stays in cache from product to softmax


def lm_loss_mean(we: torch.Tensor, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                 *, chunk_rows: int = DEFAULT_CHUNK_ROWS, vocab_rows: int | None = None) -> torch.Tensor:
    """Mean over sequences of the masked next-token cross-entropy, as one scalar.

    [n_rows, E], [..., T, E], [..., T], [..., T] -> []. The matmuls run in ``hidden``'s dtype
    (the autocast dtype under autocast), the softmax and sums in at least float32; the loss comes
    back in ``hidden``'s dtype. A sequence whose ``mask[..., 1:]`` sums to 0 makes the loss NaN, as
    in TF and ``lm_losses``. ``vocab_rows``: the vocabulary slice the head works through at a time
    (0: all of it); default :data:`CPU_VOCAB_ROWS` for float32 and float64 on CPU, else 0.
    """
    check_mask(mask, tokens)
    if tokens.shape[-1] < 2:
        raise ValueError(f"the LM loss needs at least 2 positions, got tokens of shape {tuple(tokens.shape)}")
    if hidden.shape[:-1] != tokens.shape or mask.shape != tokens.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)}, tokens {tuple(tokens.shape)} and mask "
                         f"{tuple(mask.shape)} disagree on [..., T]")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    if vocab_rows is not None and (not isinstance(vocab_rows, int) or vocab_rows < 0):
        raise ValueError(f"vocab_rows must be an int >= 0 (0: the whole vocabulary), got {vocab_rows!r}")
    t, e = hidden.shape[-2:]
    h = hidden.reshape(-1, t, e)
    device = hidden.device.type
    if torch.is_autocast_enabled(device):     # the op is opaque to autocast: cast as a matmul would
        dtype = torch.get_autocast_dtype(device)
        h, we = h.to(dtype), we.to(dtype)
    if vocab_rows is None:
        vocab_rows = CPU_VOCAB_ROWS if device == "cpu" and h.dtype in (torch.float32, torch.float64) else 0
    loss, grad_we, grad_h = torch.ops.gpt1f.lm_loss_mean_and_grads(
        we.detach(), h.detach(), tokens.reshape(-1, t), mask.reshape(-1, t).detach(), chunk_rows,
        device == "cpu", vocab_rows)
    if _plain_autograd(we, h):
        return _AttachGrads.apply(loss, we, h, grad_we, grad_h).to(hidden.dtype)
    # dot products: no temporary the size of ``we`` (the surrogate's value cancels anyway)
    surrogate = torch.dot(we.reshape(-1), grad_we.reshape(-1)) + torch.dot(h.reshape(-1), grad_h.reshape(-1))
    return (loss + (surrogate - surrogate.detach())).to(hidden.dtype)


def _plain_autograd(*tensors: torch.Tensor) -> bool:
    """Gradients by ``torch.autograd`` itself: not traced by ``torch.compile``, no ``torch.func``
    transform around (their wrappers), so an ``autograd.Function`` may reuse its buffers."""
    if torch.compiler.is_compiling():
        return False
    return not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


FRESH_GRAD = "_gpt1f_fresh_grad"   # marks a gradient buffer no one else holds (see _AttachGrads)


class _AttachGrads(torch.autograd.Function):
    """``loss`` whose gradients with respect to ``we`` and ``hidden`` are the op's, times the
    incoming gradient: the surrogate's job under plain autograd, without the surrogate's ``[V, E]``
    product in backward. The op's gradient buffers are scaled in place and handed on marked
    ``FRESH_GRAD``: held by no one else, so the next node (``gpt1f.regional``'s embedding node) may
    write into them too. A second backward through the same graph fails on the version counter."""

    @staticmethod
    def forward(ctx, loss, we, hidden, grad_we, grad_hidden):
        ctx.save_for_backward(grad_we, grad_hidden)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        grad_we, grad_hidden = ctx.saved_tensors
        grad = grad.to(grad_we.dtype)
        grad_we, grad_hidden = grad_we.mul_(grad), grad_hidden.mul_(grad)
        setattr(grad_we, FRESH_GRAD, True)
        return grad, grad_we, grad_hidden, None, None


@torch.library.custom_op("gpt1f::lm_loss_mean_and_grads", mutates_args=())
def lm_loss_mean_and_grads(we: torch.Tensor, hidden: torch.Tensor, tokens: torch.Tensor,
                           mask: torch.Tensor, chunk_rows: int, skip_masked: bool,
                           vocab_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean LM loss and its gradients with respect to ``we`` and ``hidden``.

    [V, E], [S, T, E], [S, T], [S, T], int, bool, int -> [] (at least float32), [V, E], [S, T, E]

    ``skip_masked`` drops positions whose target is masked before the head (a host sync, free on
    CPU). Without it every position stays with weight 0, so a sequence with no unmasked target
    gets NaN weights and a NaN loss, as in TF, and nothing syncs. ``vocab_rows`` > 0 runs the head
    in slices of that many vocabulary rows (a host sync too); 0 runs it on the whole vocabulary.
    """
    s, t, e = hidden.shape
    v = we.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)      # softmax and sums at least fp32
    weights = mask[:, 1:].to(acc)                               # [S, T-1]
    counts = weights.sum(-1, keepdim=True)
    weights = (weights / (counts * s)).flatten()                # row weights of the mean of means
    inputs = hidden[:, :-1].reshape(-1, e)                      # [S (T-1), E]
    targets = tokens[:, 1:].reshape(-1)
    rows = mask[:, 1:].flatten().nonzero().squeeze(1) if skip_masked else None
    if rows is not None:
        inputs, targets, weights = inputs[rows], targets[rows], weights[rows]
    step = vocab_rows if vocab_rows > 0 else v
    vocab = [(a, min(a + step, v)) for a in range(0, v, step)]
    we_mm = we.to(hidden.dtype)
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    grad_inputs = torch.empty(inputs.shape, dtype=hidden.dtype, device=hidden.device)
    grad_we = scratch.empty("lm_grad_we", we.shape, dtype=acc, device=we.device)
    if inputs.shape[0] == 0:
        grad_we.zero_()
    # One logits buffer for every chunk, kept across calls (gpt1f.scratch): a fresh 80 MB
    # allocation costs page faults on each use.
    buffer = scratch.empty("lm_logits", (v * min(chunk_rows, inputs.shape[0]),),
                           dtype=hidden.dtype, device=hidden.device)
    for start in range(0, inputs.shape[0], chunk_rows):
        chunk = slice(start, start + chunk_rows)
        h, y = inputs[chunk], targets[chunk]
        logits = buffer[:v * len(y)].view(v, len(y))
        loss += _chunk_loss_and_grads(we_mm, h, y, weights[chunk], logits, vocab, grad_inputs[chunk],
                                      grad_we, accumulate=start > 0)
    grad_hidden = torch.zeros_like(hidden)
    if rows is None:
        grad_hidden[:, :-1] = grad_inputs.view(s, t - 1, e)
    else:
        grad_hidden[rows // (t - 1), rows % (t - 1)] = grad_inputs
        if bool((counts == 0).any()):
            loss, grad_we, grad_hidden = (x.fill_(float("nan")) for x in (loss, grad_we, grad_hidden))
    return loss, grad_we.to(we.dtype), grad_hidden


def _chunk_loss_and_grads(we: torch.Tensor, h: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                          logits: torch.Tensor, vocab: list[tuple[int, int]], grad_h: torch.Tensor,
                          grad_we: torch.Tensor, *, accumulate: bool) -> torch.Tensor:
    """One chunk of positions: returns its weighted loss, writes its ``d loss / d h`` into
    ``grad_h`` and adds (``accumulate``) or writes its ``d loss / d we`` into ``grad_we``.

    [V, E], [c, E], [c], [c] (acc), [V, c] (buffer), slices of V, [c, E], [V, E] (acc) -> []

    Two passes over the vocabulary slices. The first forms each slice's logits (vocabulary-major:
    MKL runs ``[V, E] @ [E, c]`` faster than ``[c, V]``) and, while the slice is still in cache,
    its column maxima and ``exp(logit - slice max)`` in place with their sums. The second rescales
    each slice to ``w * softmax - w * onehot(y)`` (the gradient of the loss with respect to the
    logits) and multiplies it into both gradients. On the whole vocabulary at once this is the
    plain softmax. In slices of a thousand rows on CPU the softmax work reads each slice from cache
    instead of making four passes over the whole ``[V, c]`` buffer in memory, and the logits
    product, whose output is then a slice, runs faster too.
    """
    acc = grad_we.dtype
    if len(vocab) == 1:
        hits = [(y, torch.arange(len(y), device=y.device))]
    else:   # each slice's targets: (row in the slice, column)
        order = torch.argsort(y)
        starts = torch.tensor([a for a, _ in vocab] + [vocab[-1][1]], device=y.device)
        bounds = torch.searchsorted(y[order], starts).tolist()
        hits = [(y[cols] - a, cols) for (a, _), cols in
                zip(vocab, (order[lo:hi] for lo, hi in zip(bounds, bounds[1:])))]
    target_logit = torch.empty(len(y), dtype=acc, device=y.device)
    exps, tops, totals = [], [], []
    for (a, b), (slice_rows, cols) in zip(vocab, hits):
        part = torch.mm(we[a:b], h.T, out=logits[a:b]).to(acc)          # [b - a, c]
        target_logit[cols] = part[slice_rows, cols]
        top = part.amax(0)
        totals.append(part.sub_(top).exp_().sum(0))                        # in place
        exps.append(part)
        tops.append(top)
    tops, totals = torch.stack(tops), torch.stack(totals)                  # [slices, c]
    top = tops.amax(0)
    shift = tops.sub_(top).exp_()                                          # exp(slice max - max)
    total = (totals * shift).sum(0)
    loss = ((top + total.log() - target_logit) * w).sum()
    scale = shift.mul_(w / total)                                          # w / sum exp, per slice
    # summed over slices in at least float32 (one slice: the product's own dtype, as a plain head)
    into = grad_h if len(vocab) == 1 or grad_h.dtype == acc else grad_h.new_empty(grad_h.shape, dtype=acc)
    h_acc = h.to(acc)
    for i, ((a, b), (slice_rows, cols), part) in enumerate(zip(vocab, hits, exps)):
        probs = part.mul_(scale[i])
        probs[slice_rows, cols] -= w[cols]                                  # ... - w * onehot(y)
        product, rows_we = probs.to(into.dtype), we[a:b].to(into.dtype)
        if i == 0:
            torch.mm(product.T, rows_we, out=into)
        else:
            into.addmm_(product.T, rows_we)
        if accumulate:
            grad_we[a:b].addmm_(probs, h_acc)
        else:
            torch.mm(probs, h_acc, out=grad_we[a:b])
    if into is not grad_h:
        grad_h.copy_(into)
    return loss


@lm_loss_mean_and_grads.register_fake
def _(we, hidden, tokens, mask, chunk_rows, skip_masked, vocab_rows=0):
    return (hidden.new_empty((), dtype=torch.promote_types(hidden.dtype, torch.float32)),
            torch.empty_like(we), torch.empty_like(hidden))


@lm_loss_mean_and_grads.register_vmap
def _(info, in_dims, we, hidden, tokens, mask, chunk_rows, skip_masked, vocab_rows=0):
    """One call per example of the vmapped axis (each example's mean is its own loss)."""
    args = (we, hidden, tokens, mask)

    def example(i):
        return [a if d is None else a.select(d, i) for a, d in zip(args, in_dims[:4])]
    outs = [lm_loss_mean_and_grads(*example(i), chunk_rows, skip_masked, vocab_rows)
            for i in range(info.batch_size)]
    return tuple(torch.stack(parts) for parts in zip(*outs)), (0, 0, 0)
