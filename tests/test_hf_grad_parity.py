"""Every gradient, and the parameters after three updates, against transformers' model.

The peer is ``OpenAIGPTDoubleHeadsModel`` holding the same weights (through ``save_hf`` +
``from_pretrained``), float64, eval mode (no dropout), on a batch with padding. Its gradients come
from its own modules and autograd; gpt1f's from ``torch.func.grad`` of ``gpt1f.loss_fn`` and from
``train_step``.

The two losses are made the same function of the weights this way: the classifier term is the
peer's own ``mc_loss`` (cross-entropy over the choices, averaged over examples, as TF). The LM
term cannot be the peer's ``lm_loss``: transformers averages over all unmasked tokens of the batch
(TF per sequence, then over sequences) and its head scores only the token and special rows, while
TF's scores every row of ``we``, the position rows too. So it is computed here from the peer's last
hidden states and its two embedding matrices, with TF's formula; the gradient of that term still
flows through the peer's blocks and embeddings.

After three updates, gpt1f's ``train_step`` is compared with the numpy transcription of TF's Adam
(``tests/tf_adam_reference.py``) fed the peer's gradients at each step.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt1f
from gpt1f.hf import TRANSFORMS, name_table, save_hf
from tests import tf_adam_reference
from tests.test_hf_parity import random_params

transformers = pytest.importorskip("transformers")

F64 = torch.float64
LM_COEF = 0.5
CFG = gpt1f.Config.tiny(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, clf_pdrop=0.0)
LENGTHS = [[9, 6], [4, 8]]          # real tokens per sequence; the rest of T = 9 is padding
# The multiple-choice head adds its bias to every choice's logit, which the softmax over choices
# ignores: its true gradient is 0 (gpt1f gets exactly 0, transformers ~1e-17), checked absolutely.
ZERO_BY_SYMMETRY = ("model/clf/b:0",)


def padded_batch(cfg: gpt1f.Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """tokens/mask [2, 2, 9] with ragged real lengths, ``_classify_`` last; label [2]."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.n_vocab, (2, 2, 9), generator=g)
    mask = torch.zeros(2, 2, 9, dtype=F64)
    for b, row in enumerate(LENGTHS):
        for c, n in enumerate(row):
            tokens[b, c, n - 1] = cfg.clf_token
            tokens[b, c, n:] = 0                                  # padding
            mask[b, c, :n] = 1
    return {"tokens": tokens, "mask": mask, "label": torch.tensor([1, 0])}


def peer_loss_and_grads(params, batch, directory) -> tuple[float, dict[str, np.ndarray]]:
    """The peer's loss and its gradients, mapped to TF names and shapes."""
    save_hf(params, directory, cfg=CFG)
    model = transformers.OpenAIGPTDoubleHeadsModel.from_pretrained(directory, dtype=F64).eval()
    clf_at = (batch["tokens"] == CFG.clf_token).to(torch.int64).argmax(-1)        # [B, C]
    out = model(batch["tokens"], mc_token_ids=clf_at, mc_labels=batch["label"],
                output_hidden_states=True)
    body = model.transformer
    we = torch.cat([body.tokens_embed.weight, body.positions_embed.weight])      # TF's row order
    logits = out.hidden_states[-1][..., :-1, :] @ we.T                           # [B, C, T-1, rows]
    nll = F.cross_entropy(logits.flatten(0, -2), batch["tokens"][..., 1:].flatten(),
                          reduction="none").view(batch["tokens"][..., 1:].shape)
    m = batch["mask"][..., 1:]
    lm = ((nll * m).sum(-1) / m.sum(-1)).mean()
    loss = out.mc_loss + LM_COEF * lm
    loss.backward()

    grads = {}
    named = dict(model.named_parameters())
    for hf_name, (tf_name, how) in name_table(CFG).items():
        weight = named.get(hf_name, named.get(f"transformer.{hf_name}"))
        grads[tf_name] = TRANSFORMS[how][2](weight.grad).detach().numpy()
    grads["model/we:0"] = torch.cat([body.tokens_embed.weight.grad,
                                     body.positions_embed.weight.grad]).numpy()
    return loss.item(), grads


def max_rel(ours: dict, theirs: dict) -> dict[str, float]:
    """Max abs difference over max abs value, per tensor (those zero by symmetry left out)."""
    return {k: float(np.abs(np.asarray(ours[k]) - theirs[k]).max() / np.abs(theirs[k]).max())
            for k in theirs if k not in ZERO_BY_SYMMETRY}


def test_the_batch_has_padding_and_every_gradient_is_nonzero(tmp_path):
    batch = padded_batch(CFG)
    assert batch["mask"].sum() < batch["mask"].numel()
    _, grads = peer_loss_and_grads(random_params(CFG, F64), batch, tmp_path)
    assert all(np.abs(g).max() > 0 for g in grads.values())


def test_every_gradient_equals_transformers_float64(tmp_path):
    params = random_params(CFG, F64)
    batch = padded_batch(CFG)
    loss, theirs = peer_loss_and_grads(params, batch, tmp_path)
    ours, ours_loss = torch.func.grad_and_value(gpt1f.loss_fn)(params, batch, cfg=CFG,
                                                               lm_coef=LM_COEF)
    assert ours.keys() == theirs.keys() == params.keys()
    assert ours_loss.item() == pytest.approx(loss, rel=1e-13)
    errors = max_rel({k: v.numpy() for k, v in ours.items()}, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, f"{worst}: relative error {errors[worst]:.3g}"
    for k in ZERO_BY_SYMMETRY:
        assert ours[k].abs().max() <= 1e-15 and np.abs(theirs[k]).max() <= 1e-15, k


def test_three_updates_equal_tf_adam_fed_transformers_gradients(tmp_path):
    """gpt1f's train_step (fused LM loss, OpenAIAdam) vs peer gradients + TF's Adam in numpy."""
    params = random_params(CFG, F64)
    batch = padded_batch(CFG)
    hp = dict(lr=1e-3, warmup=0.2, t_total=3, b1=0.9, b2=0.999, e=1e-8, l2=0.01,
              vector_l2=False, max_grad_norm=1.0)
    opt = gpt1f.openai_adam(hp["lr"], schedule="warmup_linear",
                            **{k: v for k, v in hp.items() if k != "lr"})
    ours, state = params, opt.init(params)
    theirs = {k: v.numpy() for k, v in params.items()}
    tf_state = tf_adam_reference.init(theirs)
    norms = []
    for i in range(3):
        ours, state, metrics = gpt1f.train_step(ours, state, batch, gpt1f.random.key(i), cfg=CFG,
                                                opt=opt, lm_coef=LM_COEF)
        _, grads = peer_loss_and_grads({k: torch.from_numpy(v) for k, v in theirs.items()},
                                       batch, tmp_path / str(i))
        norms.append(float(np.sqrt(sum(np.sum(g * g) for g in grads.values()))))
        theirs, tf_state = tf_adam_reference.step(theirs, grads, tf_state,
                                                  schedule_name="warmup_linear", **hp)
        assert metrics["grad_norm"].item() == pytest.approx(norms[-1], rel=1e-10)
    assert min(norms) > hp["max_grad_norm"]           # the global clip is active
    errors = max_rel({k: v.numpy() for k, v in ours.items()}, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, f"{worst}: relative error {errors[worst]:.3g}"
    moved = max_rel({k: v.numpy() for k, v in params.items()}, theirs)
    assert min(moved.values()) > 1e-6                 # every tensor moved, far beyond 1e-10
    for k in ZERO_BY_SYMMETRY:                         # no gradient, no decay: (almost) still
        assert np.abs(ours[k].numpy() - theirs[k]).max() <= 1e-12, k
