"""The model's hyper-parameters: one frozen dataclass with named presets."""
from __future__ import annotations

import dataclasses

ACTIVATIONS = ("gelu", "relu", "swish")
PRETRAINED_N_CTX = 512  # the released position table has 512 rows


@dataclasses.dataclass(frozen=True)
class Config:
    """GPT-1 hyper-parameters; defaults are the released 117M model.

    Rows of ``model/we:0`` are, in order: ``n_vocab`` BPE tokens, ``n_special`` task tokens
    (``_start_``, ``_delimiter_``, ``_classify_`` for ROCStories), ``n_ctx`` positions.
    ``pretrained=True`` marks a config meant for the released weights, which caps ``n_ctx`` at 512.
    """

    n_vocab: int = 40478
    n_special: int = 3
    n_ctx: int = 512
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    afn: str = "gelu"
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    clf_pdrop: float = 0.1
    pretrained: bool = False

    def __post_init__(self):
        for name in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Config.{name} must be a positive int, got {value!r}")
        if not isinstance(self.n_special, int) or self.n_special < 0:
            raise ValueError(f"Config.n_special must be an int >= 0, got {self.n_special!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"Config.n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                "every head needs the same width")
        if self.afn not in ACTIVATIONS:
            raise ValueError(f"Config.afn={self.afn!r} is unknown; choose one of {ACTIVATIONS}")
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop", "clf_pdrop"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"Config.{name}={p!r} must lie in [0, 1)")
        if self.pretrained and self.n_ctx > PRETRAINED_N_CTX:
            raise ValueError(
                f"Config.n_ctx={self.n_ctx} exceeds {PRETRAINED_N_CTX}, the number of position "
                "embeddings in the pre-trained weights")

    @property
    def n_rows(self) -> int:
        """Rows of ``model/we:0``: tokens, special tokens, positions."""
        return self.n_vocab + self.n_special + self.n_ctx

    @property
    def clf_token(self) -> int:
        """Id of the last special token, whose hidden state the classifier reads."""
        return self.n_vocab + self.n_special - 1

    @property
    def pos_offset(self) -> int:
        """Row of ``model/we:0`` holding position 0."""
        return self.n_vocab + self.n_special

    @property
    def head_dim(self) -> int:
        """Width of one attention head (the KV cache's last axis)."""
        return self.n_embd // self.n_head

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def gpt1(cls, **changes) -> "Config":
        """The released 117M model (12 x 768, 12 heads), for the pre-trained weights."""
        return cls(pretrained=True, **changes)

    @classmethod
    def tiny(cls, **changes) -> "Config":
        """A few-thousand-parameter model for tests: 2 layers, 32 wide, 4 heads, 16 positions."""
        base = dict(n_vocab=50, n_special=3, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
        return cls(**{**base, **changes})
