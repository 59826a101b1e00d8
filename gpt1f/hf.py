"""The HuggingFace transformers ``openai-gpt`` layout: ``config.json`` + ``model.safetensors``.

Files written here load with ``transformers.OpenAIGPTModel`` / ``OpenAIGPTLMHeadModel`` /
``OpenAIGPTDoubleHeadsModel.from_pretrained(dir)``, and ``load_hf`` reads what their
``save_pretrained(dir)`` writes (keys with or without the ``transformer.`` prefix, the tied
``lm_head.weight`` beside or instead of ``tokens_embed.weight``).

Mapping decisions:
- ``model/we:0`` is split: rows ``[0, n_vocab + n_special)`` (tokens, then special tokens) are
  ``tokens_embed.weight`` and the last ``n_ctx`` rows are ``positions_embed.weight``. HF's
  ``vocab_size`` is therefore ``n_vocab + n_special``; ``config.json`` records ``n_special`` (an
  extra key transformers keeps) so the split can be undone. Without it, ``n_special = 0``.
- The ``clf`` head is HF's multiple-choice head, ``multiple_choice_head.summary`` (a Linear, weight
  ``[n_class, n_embd]`` = ``clf/w`` transposed), which ``OpenAIGPTDoubleHeadsModel`` reads when
  ``n_class == 1``; the LM-head model reports the two keys as unexpected and ignores them.
  ``save_hf(..., head=False)`` leaves it out; ``load_hf`` draws a missing head from ``seed``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import torch

from .config import ACTIVATIONS, Config
from .params import init_value, param_shapes

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"   # transformers' sharded checkpoints
CONFIG_SHA1_KEY = "gpt1f_config_sha1"         # safetensors metadata: the config.json it was saved with
INT_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_special")
FLOAT_KEYS = ("embd_pdrop", "attn_pdrop", "resid_pdrop", "summary_first_dropout", "layer_norm_epsilon")
PREFIX, LM_HEAD = "transformer.", "lm_head.weight"
TOKENS, POSITIONS = "tokens_embed.weight", "positions_embed.weight"
LAYER_NORM_EPSILON = 1e-5

# HF name (block i)          TF name (block i)                transform
BLOCK_TABLE = (
    ("h.{i}.attn.c_attn.weight", "model/h{i}/attn/c_attn/w:0", "conv"),
    ("h.{i}.attn.c_attn.bias", "model/h{i}/attn/c_attn/b:0", "same"),
    ("h.{i}.attn.c_proj.weight", "model/h{i}/attn/c_proj/w:0", "conv"),
    ("h.{i}.attn.c_proj.bias", "model/h{i}/attn/c_proj/b:0", "same"),
    ("h.{i}.ln_1.weight", "model/h{i}/ln_1/g:0", "same"),
    ("h.{i}.ln_1.bias", "model/h{i}/ln_1/b:0", "same"),
    ("h.{i}.mlp.c_fc.weight", "model/h{i}/mlp/c_fc/w:0", "conv"),
    ("h.{i}.mlp.c_fc.bias", "model/h{i}/mlp/c_fc/b:0", "same"),
    ("h.{i}.mlp.c_proj.weight", "model/h{i}/mlp/c_proj/w:0", "conv"),
    ("h.{i}.mlp.c_proj.bias", "model/h{i}/mlp/c_proj/b:0", "same"),
    ("h.{i}.ln_2.weight", "model/h{i}/ln_2/g:0", "same"),
    ("h.{i}.ln_2.bias", "model/h{i}/ln_2/b:0", "same"),
)
HEAD_TABLE = (
    ("multiple_choice_head.summary.weight", "model/clf/w:0", "transpose"),
    ("multiple_choice_head.summary.bias", "model/clf/b:0", "same"),
)
# tokens_embed.weight = model/we:0[:n_vocab + n_special]; positions_embed.weight = model/we:0[-n_ctx:]

# transform: (TF tensor -> HF tensor, TF shape -> HF shape, HF tensor -> TF tensor)
TRANSFORMS = {
    "same": (lambda t: t, lambda s: tuple(s), lambda t: t),
    "conv": (lambda t: t[0], lambda s: tuple(s[1:]), lambda t: t[None]),  # [1, nx, nf] <-> [nx, nf]
    "transpose": (lambda t: t.T, lambda s: tuple(s[::-1]), lambda t: t.T),  # [e, c] <-> [c, e]
}


def name_table(cfg: Config, head: bool = True) -> dict[str, tuple[str, str]]:
    """HF name -> (TF name, transform) for the blocks and, with ``head``, the classifier."""
    table = {hf.format(i=i): (tf.format(i=i), how)
             for i in range(cfg.n_layer) for hf, tf, how in BLOCK_TABLE}
    if head:
        table.update({hf: (tf, how) for hf, tf, how in HEAD_TABLE})
    return table


def hf_config(cfg: Config) -> dict:
    """``config.json`` content for ``cfg``."""
    return {
        "architectures": ["OpenAIGPTLMHeadModel"], "model_type": "openai-gpt",
        "vocab_size": cfg.n_vocab + cfg.n_special, "n_special": cfg.n_special,
        "n_positions": cfg.n_ctx, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "afn": cfg.afn, "embd_pdrop": cfg.embd_pdrop,
        "attn_pdrop": cfg.attn_pdrop, "resid_pdrop": cfg.resid_pdrop,
        "layer_norm_epsilon": LAYER_NORM_EPSILON, "initializer_range": 0.02,
        "summary_type": "cls_index", "summary_use_proj": True, "summary_activation": None,
        "summary_proj_to_labels": True, "summary_first_dropout": cfg.clf_pdrop,
        "tie_word_embeddings": True,
    }


def config_from_hf(hf: dict, where) -> Config:
    """The ``Config`` a transformers ``config.json`` describes; errors name the file and key."""
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got a {type(hf).__name__}")
    for key in INT_KEYS:
        if key in hf and (type(hf[key]) is not int or hf[key] < 0):
            raise ValueError(f"{where}: {key} must be a non-negative integer, got {hf[key]!r}")
    for key in FLOAT_KEYS:
        if key in hf and (type(hf[key]) not in (int, float)):
            raise ValueError(f"{where}: {key} must be a number, got {hf[key]!r}")
    if "afn" in hf and not isinstance(hf["afn"], str):
        raise ValueError(f"{where}: afn must be a string, got {hf['afn']!r}")
    if hf.get("model_type") != "openai-gpt":
        raise ValueError(f"{where}: model_type is {hf.get('model_type')!r}, expected 'openai-gpt'")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in hf]
    if missing:
        raise KeyError(f"{where}: missing {', '.join(missing)}")
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPSILON)
    if eps != LAYER_NORM_EPSILON:
        raise ValueError(f"{where}: layer_norm_epsilon={eps}, gpt1f uses {LAYER_NORM_EPSILON}")
    afn = {"silu": "swish"}.get(hf.get("afn", "gelu"), hf.get("afn", "gelu"))
    if afn not in ACTIVATIONS:
        raise ValueError(f"{where}: afn={afn!r} is not one of {ACTIVATIONS}")
    n_special = hf.get("n_special", 0)
    try:
        return _config(hf, afn, n_special)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _config(hf: dict, afn: str, n_special: int) -> Config:
    return Config(
        n_vocab=hf["vocab_size"] - n_special, n_special=n_special, n_ctx=hf["n_positions"],
        n_embd=hf["n_embd"], n_head=hf["n_head"], n_layer=hf["n_layer"], afn=afn,
        embd_pdrop=hf.get("embd_pdrop", 0.1), attn_pdrop=hf.get("attn_pdrop", 0.1),
        resid_pdrop=hf.get("resid_pdrop", 0.1), clf_pdrop=hf.get("summary_first_dropout", 0.1))


def save_hf(params: dict[str, torch.Tensor], path, *, cfg: Config, head: bool = True) -> pathlib.Path:
    """Write ``params`` as ``config.json`` + ``model.safetensors`` (unprefixed keys, as
    ``OpenAIGPTModel`` saves them; dtype kept). Returns the folder."""
    from safetensors.torch import save_file

    n_class = params["model/clf/b:0"].shape[0] if "model/clf/b:0" in params else 1
    expected = param_shapes(cfg, n_class)
    if not head:
        expected = {k: s for k, s in expected.items() if not k.startswith("model/clf/")}
        params = {k: v for k, v in params.items() if not k.startswith("model/clf/")}
    check_tf_params(params, expected)
    we = params["model/we:0"]
    tensors = {TOKENS: we[:cfg.pos_offset], POSITIONS: we[cfg.pos_offset:]}
    for hf, (tf, how) in name_table(cfg, head).items():
        tensors[hf] = TRANSFORMS[how][0](params[tf])
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config_text = json.dumps(hf_config(cfg), indent=2) + "\n"
    weights, config = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    tmp_weights, tmp_config = (p.with_name(f"{p.name}.{os.getpid()}.tmp") for p in (weights, config))
    try:
        save_file(tensors, str(tmp_weights), metadata={"format": "pt",
                                                       CONFIG_SHA1_KEY: _sha1(config_text.encode())})
        tmp_config.write_text(config_text)
    except BaseException:
        tmp_weights.unlink(missing_ok=True)
        tmp_config.unlink(missing_ok=True)
        raise
    os.replace(tmp_weights, weights)   # killed here: new weights, old config, refused by load_hf
    os.replace(tmp_config, config)
    return directory


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def check_tf_params(params: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Exactly the ``expected`` names with their shapes, else an error naming the variables."""
    missing = [k for k in expected if k not in params]
    unknown = [k for k in params if k not in expected]
    if missing or unknown:
        raise KeyError(f"params: missing {missing or 'none'}, unexpected {unknown or 'none'}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"params[{name!r}] has shape {list(params[name].shape)}, "
                             f"expected {list(shape)}")


def load_hf(path, *, n_special: int | None = None, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], Config]:
    """Read a transformers ``openai-gpt`` folder; returns ``(params, cfg)`` in ``dtype``.

    ``n_special=None`` keeps the file's special tokens (``config.json``'s ``n_special``, else 0).
    A file without special tokens (e.g. the released ``openai-gpt``) can be given ``n_special``
    new rows, drawn N(0, 0.02) from ``seed``; a missing ``clf`` head is drawn next, with one class.
    Every key and shape is checked before any parameter is built. Sharded checkpoints
    (``model.safetensors.index.json`` and its shards) load too. A ``model.safetensors`` written by
    ``save_hf`` records its ``config.json``; another config beside it (an interrupted save) is refused.
    """
    directory = pathlib.Path(path)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"missing {config_path} (a transformers save_pretrained folder "
                                f"with safetensors weights is expected)")
    config_bytes = config_path.read_bytes()
    cfg = config_from_hf(parse_config(config_bytes, config_path), config_path)
    if weights_path.is_file():
        raw, metadata = read_safetensors(weights_path)
        saved_with = (metadata or {}).get(CONFIG_SHA1_KEY)
        if saved_with is not None and saved_with != _sha1(config_bytes):
            raise ValueError(f"{config_path} is not the config {weights_path} was saved with (an "
                             "interrupted save_hf?); save the model again")
    elif (directory / INDEX_NAME).is_file():
        raw = read_sharded(directory / INDEX_NAME)
        weights_path = directory / INDEX_NAME
    else:
        raise FileNotFoundError(f"missing {weights_path} (or a sharded {INDEX_NAME}) in "
                                f"{directory}: a transformers save_pretrained folder with "
                                "safetensors weights is expected")
    tensors = hf_tensors(raw, cfg, weights_path)
    has_head = check_hf_tensors(tensors, cfg, weights_path)

    generator = torch.Generator().manual_seed(seed)
    tokens = tensors[TOKENS].to(dtype)
    if n_special is not None and n_special != cfg.n_special:
        if cfg.n_special:
            raise ValueError(f"{weights_path} holds {cfg.n_special} special-token rows, "
                             f"n_special={n_special} asked for")
        cfg = cfg.replace(n_special=n_special)
        extra = init_value("model/we:0", (n_special, cfg.n_embd), generator, dtype)
        tokens = torch.cat([tokens, extra])
    params = {"model/we:0": torch.cat([tokens, tensors[POSITIONS].to(dtype)])}
    for hf, (tf, how) in name_table(cfg, has_head).items():
        params[tf] = TRANSFORMS[how][2](tensors[hf]).to(dtype).contiguous()
    if not has_head:
        for tf, shape in param_shapes(cfg).items():
            if tf.startswith("model/clf/"):
                params[tf] = init_value(tf, shape, generator, dtype)
    params = {k: params[k] for k in param_shapes(cfg, params["model/clf/b:0"].shape[0])}
    bad = next((k for k, v in params.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise ValueError(f"{weights_path}: {bad} holds NaN or inf values")
    return params, cfg


def parse_config(data: bytes, path: pathlib.Path) -> dict:
    """``config.json``'s object; errors name the file."""
    try:
        hf = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got a {type(hf).__name__}")
    return hf


def read_safetensors(path: pathlib.Path, keys=None) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Every tensor (or only ``keys``) of one safetensors file and its metadata; errors name it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
            missing = sorted(set(keys) - present) if keys is not None else []
            if missing:
                raise KeyError(f"{path} lacks {missing[:5]} that the index places there")
            return {k: f.get_tensor(k) for k in (present if keys is None else keys)}, f.metadata()
    except KeyError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def read_sharded(index_path: pathlib.Path) -> dict[str, torch.Tensor]:
    """The tensors of a sharded checkpoint: ``model.safetensors.index.json``'s ``weight_map``
    (tensor name -> shard file in the same folder)."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map must map tensor names to file names")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: not a safetensors index ({e!r})") from None
    by_file: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        by_file.setdefault(name, []).append(key)
    raw = {}
    for name, keys in by_file.items():
        shard = index_path.parent / name
        if pathlib.PurePath(name).name != name or not shard.is_file():
            raise FileNotFoundError(f"{index_path} names the shard {name!r}, which is not a file "
                                    f"in {index_path.parent}")
        raw.update(read_safetensors(shard, keys)[0])
    return raw


def hf_tensors(raw: dict[str, torch.Tensor], cfg: Config, where) -> dict[str, torch.Tensor]:
    """Keys without the ``transformer.`` prefix; the tied ``lm_head.weight`` folded into tokens."""
    tensors = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in raw.items()}
    if len(tensors) != len(raw):
        both = sorted(k for k in raw if PREFIX + k in raw)
        raise KeyError(f"{where}: keys present both with and without {PREFIX!r}: {both}")
    lm_head = tensors.pop(LM_HEAD, None)
    if lm_head is None:
        return tensors
    tokens = tensors.setdefault(TOKENS, lm_head)
    if tokens.shape != lm_head.shape or not torch.equal(tokens, lm_head):
        raise ValueError(f"{where}: {LM_HEAD} differs from {TOKENS}; GPT-1 ties its output "
                         f"layer to the token embedding")
    return tensors


def check_hf_tensors(tensors: dict[str, torch.Tensor], cfg: Config, where) -> bool:
    """Check the full key set and every shape against ``cfg``; returns whether a head is present."""
    head_keys = {hf for hf, _, _ in HEAD_TABLE}
    present_head = head_keys & tensors.keys()
    if present_head and present_head != head_keys:
        raise KeyError(f"{where}: has {sorted(present_head)} but not {sorted(head_keys - present_head)}")
    has_head = bool(present_head)
    n_class = tensors["multiple_choice_head.summary.bias"].shape[0] if has_head else 1
    shapes = param_shapes(cfg, n_class)
    expected = {TOKENS: (cfg.n_vocab + cfg.n_special, cfg.n_embd), POSITIONS: (cfg.n_ctx, cfg.n_embd)}
    for hf, (tf, how) in name_table(cfg, has_head).items():
        expected[hf] = TRANSFORMS[how][1](shapes[tf])
    missing = sorted(expected.keys() - tensors.keys())
    unknown = sorted(tensors.keys() - expected.keys())
    if missing or unknown:
        raise KeyError(f"{where}: missing keys {missing or 'none'}, unknown keys {unknown or 'none'} "
                       f"(for n_layer={cfg.n_layer})")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{where}: {key} has shape {list(tensors[key].shape)}, expected "
                             f"{list(shape)} from {CONFIG_NAME}")
        if not tensors[key].is_floating_point():
            raise ValueError(f"{where}: {key} has dtype {tensors[key].dtype}, expected floating point")
    return has_head
