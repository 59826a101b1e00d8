"""Per-example gradients: ``gpt1f.per_example_grads`` against Opacus on transformers' model.

The peer is ``OpenAIGPTDoubleHeadsModel`` holding the same weights (``save_hf`` +
``from_pretrained``), float64, every dropout 0, wrapped in ``opacus.GradSampleModule``. Opacus
computes each sample's gradient from its own per-layer rules (``grad_sample_mode="hooks"``: Linear,
Embedding and LayerNorm have grad samplers; transformers' ``Conv1D`` has none, so Opacus falls back
to ``torch.func`` for it) or for every layer through ``torch.func`` (``"functorch"``). Both are
compared. Opacus's other modes cannot: ``"ew"`` (expanded weights) stops at ``Conv1D``'s
``torch.addmm`` ("Expanded Weights encountered but cannot handle function addmm"), and ``"ghost"``
keeps no per-sample gradients and refuses the tied embeddings ("Parameter tying is not supported
with Ghost Clipping").

What is compared, per example of a batch of 4 examples x 2 choices with ragged padding:
``mc_loss_b + lm_coef * lm_loss_b`` for ``lm_coef`` 0 (multiple choice only) and 0.5, where
``mc_loss_b`` is the cross-entropy over example b's choices and ``lm_loss_b`` TF's LM loss: the
next-token cross-entropy averaged over each sequence's unmasked tokens, then over its choices.
gpt1f's side is ``per_example_grads`` of ``gpt1f.loss_fn`` (``train=False``), which runs each
example as a batch of one. Making the peer compute the same function:

- Opacus's "sample" is a row of each layer's input. The double-heads model flattens ``[B, C, T]``
  to ``[B*C, T]`` before its blocks but not before its heads, so the peer is fed ``[B*C, T]``
  throughout: every layer then sees one row per sequence, and an example's gradient is the sum
  of its sequences' per-sample gradients (each sequence's forward pass is separate, and only
  example b's loss reads its sequences). The choice scores are reshaped to ``[B, C]`` for the loss.
- Left alone, transformers looks up positions as ``[1, T]``, one row for the whole batch, so
  Opacus credits the whole batch's position-embedding gradient to the first sample (the test
  then fails on ``model/we:0``); the same positions are passed as ``position_ids`` ``[B*C, T]``.
- The loss is a sum over examples with ``loss_reduction="sum"``; the per-sample gradients are
  then those of the per-example losses (a mean would scale each layer's by its own row count).
- transformers' ``lm_loss`` is no per-example loss (it averages over all tokens of the batch) and
  its head scores only the token and special rows, while TF's scores every row of ``we``, the
  positions too. So the LM term is written here with TF's formula on the peer's scores against
  both of its tables; the position scores come from a ``Linear`` sharing ``positions_embed.weight``
  so that Opacus sees them (it accumulates a tied weight's samples over every layer using it, as
  it does for ``lm_head`` and ``tokens_embed``).

Gradients map back to TF names with ``gpt1f.hf``'s table (Conv1D ``[nx, nf]`` -> ``[1, nx, nf]``,
the classifier transposed); ``model/we:0`` is the token (+ special) table's gradient stacked on the
position table's. Tolerance: per example and tensor, max abs difference <= 1e-12 x that tensor's
max abs gradient (measured: <= 7.4e-15 in both modes and both settings). Gradients that are zero by
symmetry (the classifier bias, and with ``lm_coef=0`` the last block's ``ln_2`` bias, which shifts
every choice's score alike) are bounded absolutely by 1e-14 on both sides (measured <= 1.7e-16).
"""
import functools

import pytest
import torch
import torch.nn.functional as F

import gpt1f
from gpt1f.hf import TRANSFORMS, name_table, save_hf
from tests.test_hf_parity import random_params

transformers = pytest.importorskip("transformers")
opacus_utils = pytest.importorskip("opacus.grad_sample.utils")   # wrap_model: the mode switch

F64 = torch.float64
CFG = gpt1f.Config.tiny(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, clf_pdrop=0.0)
LENGTHS = [[9, 6], [4, 8], [7, 9], [5, 5]]    # real tokens per sequence [B=4][C=2]; T = 9
RELATIVE_TOLERANCE, ZERO_TOLERANCE = 1e-12, 1e-14


def padded_batch(cfg: gpt1f.Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """tokens/mask [4, 2, 9] with ragged real lengths, ``_classify_`` last; label [4]."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.n_vocab, (len(LENGTHS), 2, 9), generator=g)
    mask = torch.zeros(tokens.shape, dtype=F64)
    for b, row in enumerate(LENGTHS):
        for c, n in enumerate(row):
            tokens[b, c, n - 1] = cfg.clf_token
            tokens[b, c, n:] = 0                                  # padding
            mask[b, c, :n] = 1
    return {"tokens": tokens, "mask": mask, "label": torch.tensor([1, 0, 0, 1])}


def zero_by_symmetry(cfg: gpt1f.Config, lm_coef: float) -> tuple[str, ...]:
    """Tensors whose per-example gradient is 0: they move every choice's score alike."""
    return ("model/clf/b:0",) + ((f"model/h{cfg.n_layer - 1}/ln_2/b:0",) if lm_coef == 0 else ())


class TFScoresPeer(torch.nn.Module):
    """The double-heads model, plus a ``Linear`` sharing ``positions_embed.weight`` so that the LM
    scores cover every row of TF's ``we`` (tokens, specials, positions), each through a layer
    Opacus hooks."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.position_scores = torch.nn.Linear(CFG.n_embd, CFG.n_ctx, bias=False)
        self.position_scores.weight = model.transformer.positions_embed.weight

    def forward(self, tokens, clf_at):
        """[N, T], [N] -> choice scores [N], LM scores [N, T, n_vocab + n_special + n_ctx]"""
        n, t = tokens.shape
        positions = torch.arange(t).expand(n, t)      # one row per sample, not transformers' [1, T]
        out = self.model(tokens, mc_token_ids=clf_at, position_ids=positions, output_hidden_states=True)
        scores = torch.cat([out.logits, self.position_scores(out.hidden_states[-1])], -1)
        return out.mc_logits, scores


def summed_example_losses(mc_logits, scores, batch, lm_coef: float) -> torch.Tensor:
    """sum over examples of ``mc_loss_b + lm_coef * lm_loss_b`` (TF's per-sequence LM mean).
    [B*C], [B*C, T, rows] -> []"""
    tokens, mask = batch["tokens"], batch["mask"]
    mc = F.cross_entropy(mc_logits.view(tokens.shape[:2]), batch["label"], reduction="sum")
    nll = F.cross_entropy(scores[:, :-1].flatten(0, 1), tokens[..., 1:].flatten(),
                          reduction="none").view(tokens[..., 1:].shape)          # [B, C, T-1]
    m = mask[..., 1:]
    lm = ((nll * m).sum(-1) / m.sum(-1)).mean(-1).sum()
    return mc + lm_coef * lm


def opacus_per_example_grads(params, batch, *, lm_coef: float, mode: str, directory) -> dict:
    """Opacus's per-example gradients of the peer, ``{TF name: [B, *TF shape]}``."""
    save_hf(params, directory, cfg=CFG)
    model = transformers.OpenAIGPTDoubleHeadsModel.from_pretrained(directory, dtype=F64)
    peer = opacus_utils.wrap_model(TFScoresPeer(model.train()), mode, batch_first=True, loss_reduction="sum")
    tokens = batch["tokens"].flatten(0, 1)                                          # [B*C, T]
    clf_at = (tokens == CFG.clf_token).to(torch.int64).argmax(-1)
    summed_example_losses(*peer(tokens, clf_at), batch, lm_coef).backward()

    b, c = batch["tokens"].shape[:2]

    def per_example(weight):                       # per sequence [B*C, ...] -> per example [B, ...]
        assert weight.grad_sample.shape == (b * c, *weight.shape)
        return weight.grad_sample.view(b, c, *weight.shape).sum(1)

    named = dict(model.named_parameters())
    grads = {}
    for hf_name, (tf_name, how) in name_table(CFG).items():
        weight = named.get(hf_name, named.get(f"transformer.{hf_name}"))
        grads[tf_name] = torch.stack([TRANSFORMS[how][2](g) for g in per_example(weight)])
    body = model.transformer
    grads["model/we:0"] = torch.cat([per_example(body.tokens_embed.weight),
                                     per_example(body.positions_embed.weight)], 1)
    return grads


def worst_relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max over examples of max|ours - theirs| / max|theirs|, each example apart.  [B, ...]"""
    diff = (ours - theirs).abs().flatten(1).amax(1)
    return float((diff / theirs.abs().flatten(1).amax(1)).max())


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")   # Opacus's hooks on token ids
@pytest.mark.filterwarnings("ignore:In CPU autocast")               # Opacus's functorch path, f64
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
@pytest.mark.parametrize("lm_coef", [0.0, 0.5])
def test_per_example_grads_equal_opacus_float64(tmp_path, mode, lm_coef):
    params = random_params(CFG, F64)
    batch = padded_batch(CFG)
    theirs = opacus_per_example_grads(params, batch, lm_coef=lm_coef, mode=mode, directory=tmp_path)
    loss = functools.partial(gpt1f.loss_fn, cfg=CFG, train=False, lm_coef=lm_coef)
    ours = gpt1f.per_example_grads(loss, params, batch, None)
    assert ours.keys() == theirs.keys() == params.keys()
    zeros = zero_by_symmetry(CFG, lm_coef)
    errors = {k: worst_relative_error(ours[k], theirs[k]) for k in params if k not in zeros}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RELATIVE_TOLERANCE, f"{worst}: relative error {errors[worst]:.3g}"
    for k in zeros:
        assert ours[k].abs().max() <= ZERO_TOLERANCE and theirs[k].abs().max() <= ZERO_TOLERANCE, k
    # Per example, not a batch gradient repeated: every tensor's examples differ well beyond rounding.
    for k in errors:
        spread = (theirs[k] - theirs[k].mean(0)).abs().max() / theirs[k].abs().max()
        assert spread > 1e-3, f"{k}: the examples' gradients are alike ({spread:.3g})"
