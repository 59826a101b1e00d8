"""The 2018 PyTorch port (huggingface/pytorch-openai-transformer-lm) as a benchmark peer.

Its code is not part of this project: point ``--port-dir`` (or ``$GPT1F_PORT_DIR``) at a checkout
(``git clone https://github.com/huggingface/pytorch-openai-transformer-lm``) and its
``model_pytorch.py``, ``opt.py`` and ``loss.py`` are loaded from there. The peer trains as the
port's ``train.py`` does: ``DoubleHeadModel`` over ``[B, 2, T, 2]`` (token and position ids), LM
logits against every row of the embedding, its ``MultipleChoiceLossCompute`` (backward, its
``OpenAIAdam`` step with per-tensor clipping, ``zero_grad``, ``.item()``), holding the same weights
as gpt1f (its embedding matrix has gpt1f's ``we`` layout: tokens, specials, positions).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

import gpt1f
from gpt1f.params import scope

PORT_FILES = ("model_pytorch", "opt", "loss")


def port_dir(given: str | None = None) -> Path | None:
    """The checkout to load from: ``given``, else ``$GPT1F_PORT_DIR``; None when neither is set."""
    path = given or os.environ.get("GPT1F_PORT_DIR")
    return Path(path) if path else None


def load_modules(path: Path) -> dict[str, ModuleType]:
    """The port's modules, each loaded from its file under a private name."""
    modules = {}
    for name in PORT_FILES:
        file = path / f"{name}.py"
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: --port-dir must be a checkout of "
                                    "huggingface/pytorch-openai-transformer-lm")
        spec = importlib.util.spec_from_file_location(f"gpt1f_bench_port_{name}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


def state_dict(cfg: gpt1f.Config, params) -> dict[str, torch.Tensor]:
    """gpt1f's parameters under the port's module names (``[1, nx, nf]`` weights as ``[nx, nf]``)."""
    state = {"transformer.embed.weight": params["model/we:0"],
             "task_head.linear.weight": params["model/clf/w:0"].T,
             "task_head.linear.bias": params["model/clf/b:0"]}
    for i in range(cfg.n_layer):
        for name, value in scope(params, f"model/h{i}/").items():
            port_name = f"transformer.h.{i}." + name[:-len(":0")].replace("/", ".")
            state[port_name] = value[0] if value.ndim == 3 else value
    return state


def model(cfg: gpt1f.Config, params, modules, *, pdrop: float = 0.1):
    """The port's ``DoubleHeadModel`` for multiple choice holding ``params`` (copies)."""
    mp = modules["model_pytorch"]
    args = mp.dotdict(n_embd=cfg.n_embd, n_head=cfg.n_head, n_layer=cfg.n_layer, afn=cfg.afn,
                      embd_pdrop=pdrop, attn_pdrop=pdrop, resid_pdrop=pdrop, clf_pdrop=pdrop)
    net = mp.DoubleHeadModel(args, cfg.clf_token, "multiple_choice", cfg.n_rows, cfg.n_ctx)
    missing, unexpected = net.load_state_dict({k: v.clone() for k, v in state_dict(cfg, params).items()},
                                              strict=False)
    missing = [k for k in missing if not k.endswith(".attn.b") and k != "lm_head.decoder.weight"]
    if missing or unexpected:      # attn.b: the causal mask buffer; the decoder is tied to embed
        raise RuntimeError(f"port weights do not fit: missing {missing}, unexpected {unexpected}")
    return net


def inputs(cfg: gpt1f.Config, batch) -> torch.Tensor:
    """The port's ``[B, 2, T, 2]`` input: token ids and the position rows of the embedding."""
    tokens = batch["tokens"]
    positions = torch.arange(cfg.pos_offset, cfg.pos_offset + tokens.shape[-1], device=tokens.device)
    return torch.stack([tokens, positions.expand_as(tokens)], -1)


def train_step(cfg: gpt1f.Config, net, batch, modules, *, lm_coef: float, t_total: int):
    """``step()``: the port's training step of its ``train.py`` on ``batch``. Returns the loss."""
    optimizer = modules["opt"].OpenAIAdam(
        net.parameters(), lr=6.25e-5, schedule="warmup_linear", warmup=0.002, t_total=t_total,
        b1=0.9, b2=0.999, e=1e-8, l2=0.01, vector_l2=False, max_grad_norm=1)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    compute = modules["loss"].MultipleChoiceLossCompute(criterion, criterion, lm_coef, optimizer)
    x, mask, label = inputs(cfg, batch), batch["mask"], batch["label"]

    def step():
        net.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the port's deprecated add_(scalar, tensor) forms
            lm_logits, clf_logits = net(x)
            return compute(x, label, mask, clf_logits, lm_logits)
    return step


def eval_call(cfg: gpt1f.Config, net, tokens: torch.Tensor):
    """``call()``: the port's multiple-choice logits ``[B, C]`` without dropout (its eval forward
    computes the LM logits too, as its ``iter_apply`` does)."""
    x = inputs(cfg, {"tokens": tokens})

    @torch.no_grad()
    def call():
        net.eval()
        return net(x)[1]
    return call
