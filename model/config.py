"""ModelConfig: one frozen, validated dataclass per model, and the named presets.

Every field is a plain Python value (str, int, float, bool, None) so that a config round-trips
through JSON with the run directory and can be overridden by dotted keys from the command line.

    cfg = get_preset("shakespeare-char-cpu")
    cfg = cfg.replace(n_layers=2, positions="rotary")   # validated again

Invalid configs raise one ``ValueError`` that names the field and the fix, before anything compiles.
Field types come from the annotations (model/config_base.py: ConfigBase, shared with the other configs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from model.attention import REGISTRY  # model.attention registers 'reference', model.kernels the kernels
from model.config_base import ConfigBase


def implementations() -> tuple[str, ...]:
    """'auto', 'reference' (what the others are tested against), then every other registered implementation."""
    return ("auto", "reference", *(name for name in REGISTRY if name != "reference"))


IMPLEMENTATIONS = implementations()  # as registered when this module was imported
POSITIONS = ("learned", "sinusoidal", "rotary", "none")
VALUE_MAPS = ("factored", "full")
NORMS = ("layernorm", "rmsnorm")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots")
GELUS = ("tanh", "exact")


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """A decoder-only transformer language model. Sizes use the lecture's letters (D, H, Dh, L, V)."""

    vocab_size: int = 65  # V: tokens in the vocabulary
    # the embedding/unembedding tables have padded_vocab_size rows: vocab_size rounded up to a multiple of this
    # (nanoGPT pads GPT-2's 50,257 to 50,304). The padded rows never count: the logits are sliced back to
    # vocab_size right after the unembedding. 8 lets every tensor axis of up to 8 devices split the table
    # (65 -> 72: +11% on the unembedding matmul on CPU; 64 would double it for the character models).
    vocab_multiple: int = 8
    max_len: int = 64  # T_max: the longest sequence (context window, nanoGPT's block_size)
    n_layers: int = 4  # L: blocks in the residual stream
    d_model: int = 128  # D: width of the residual stream
    n_heads: int = 4  # H: query heads per block
    d_head: int | None = None  # Dh: width of one head; None means d_model // n_heads
    n_kv_heads: int | None = None  # heads of keys and values (GQA/MQA); None means n_heads
    d_mlp: int | None = None  # hidden width of the MLP; None means 4 * d_model
    value_map: str = "factored"  # 'factored': value_down D->Dh then value_up Dh->D; 'full': one D x D per head
    positions: str = "learned"  # 'learned' | 'sinusoidal' | 'rotary' | 'none'
    rope_base: float = 10000.0  # base of the rotary frequencies
    mlp: bool = True  # False gives attention-only blocks (the induction-head models)
    causal: bool = True  # the causal mask; False lets later tokens speak to earlier ones (an ablation)
    sliding_window: int | None = None  # each query sees at most this many keys (itself included)
    dropout: float = 0.0  # dropout on embeddings and on each residual branch's output
    attention_dropout: float = 0.0  # dropout on the attention pattern (forces the 'reference' path in training)
    tie_embeddings: bool = True  # unembedding = embedding transposed (nanoGPT, GPT-2) or its own matrix
    norm: str = "layernorm"  # 'layernorm' | 'rmsnorm'
    norm_eps: float = 1e-6  # epsilon of every LayerNorm/RMSNorm (Flax's default; GPT-2 uses 1e-5)
    gelu: str = "tanh"  # the MLP's GELU: 'tanh' approximation (GPT-2's gelu_new) | 'exact' (erf)
    use_bias: bool = False  # biases in projections and norms (GPT-2/3 have them; nanoGPT's runs do not)
    dtype: str = "float32"  # compute dtype of matmuls; softmax, norms and the loss stay float32
    param_dtype: str = "float32"  # storage dtype of parameters
    scan_layers: bool = True  # one compiled block scanned L times (fast compiles) or L unrolled blocks
    remat: str = "none"  # rematerialisation of each block: 'none' | 'full' | 'dots' (save matmul outputs)
    attention_impl: str = "auto"  # see model.attention.attention: 'auto' | 'reference' | 'xla' | 'chunked' ...
    init_std: float = 0.02  # std of the normal initialiser of matrices (GPT-2)
    embed_scale: bool = False  # embedding tables (tokens, learned positions) times sqrt(d_model) (Vaswani 3.4)
    pos_init_std: float | None = None  # initial std of the learned position signal; None: see pos_table_std

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The inverse of to_dict. A config saved before ``vocab_multiple`` existed had unpadded tables: 1."""
        if "vocab_multiple" not in d:
            d = {**d, "vocab_multiple": 1}
        return super().from_dict(d)

    # ------------------------------------------------------------------ derived sizes
    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table (columns of the unembedding): ``vocab_size`` rounded up to ``vocab_multiple``."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def embed_multiplier(self) -> float:
        """What the embedding tables are multiplied by: sqrt(d_model) under ``embed_scale``, else 1."""
        return math.sqrt(self.d_model) if self.embed_scale else 1.0

    @property
    def pos_table_std(self) -> float:
        """Initial std of the learned position signal: ``pos_init_std``, else the token signal's own scale.

        Under ``embed_scale`` both embedding tables, tokens and learned positions, are multiplied by
        sqrt(d_model) (Vaswani et al. 3.4: "in the embedding layers, we multiply those weights by
        sqrt(d_model)"); the position table's parameters are drawn with std
        ``pos_table_std / embed_multiplier``. By default they start at ``init_std`` like the token
        table, so both signals start at ``init_std * sqrt(d_model)`` and, since Adam moves every
        parameter by about the learning rate, both also move at the same speed. A table added
        unscaled learns sqrt(d_model) times slower than the token signal it joins (experiments/positions:
        0.078 nats behind sinusoidal after 1500 steps when started at the token scale, 0.109 at 0.02).
        """
        if self.pos_init_std is not None:
            return self.pos_init_std
        return self.init_std * self.embed_multiplier

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        self.check_types()
        positive = ["vocab_size", "vocab_multiple", "max_len", "n_layers", "d_model", "n_heads", "rope_base"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)}: must be positive; set it to a value > 0")
        for name in ["d_head", "n_kv_heads", "d_mlp", "sliding_window"]:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"ModelConfig.{name}={value}: must be positive (or None for the default)")
        if self.d_head is None and self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.n_heads={self.n_heads} does not divide d_model={self.d_model}: "
                f"choose n_heads among the divisors of d_model, or set d_head explicitly"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads={self.kv_heads} does not divide n_heads={self.n_heads}: "
                f"n_heads must be a multiple of n_kv_heads (1 gives multi-query attention)"
            )
        if self.mlp and self.mlp_dim <= 0:
            raise ValueError(f"ModelConfig.d_mlp={self.d_mlp}: must be positive")
        for name, allowed in [
            ("value_map", VALUE_MAPS),
            ("positions", POSITIONS),
            ("norm", NORMS),
            ("dtype", DTYPES),
            ("param_dtype", DTYPES),
            ("remat", REMAT),
            ("attention_impl", implementations()),
            ("gelu", GELUS),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: unknown; choose one of {allowed}")
        for name in ["dropout", "attention_dropout"]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)}: must be in [0, 1)")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.d_head={self.head_dim}: rotary positions need an even head width")
        if not 0.0 < self.norm_eps < 1.0:
            raise ValueError(f"ModelConfig.norm_eps={self.norm_eps}: must be in (0, 1), e.g. 1e-5 (GPT-2) or 1e-6")
        if self.init_std <= 0:
            raise ValueError(f"ModelConfig.init_std={self.init_std}: must be positive")
        if self.pos_init_std is not None and self.pos_init_std <= 0:
            raise ValueError(
                f"ModelConfig.pos_init_std={self.pos_init_std}: must be positive (or null for the default)"
            )

    # ------------------------------------------------------------------ helpers
    def check_length(self, length: int) -> None:
        """Raise if a sequence of ``length`` tokens does not fit the positional table."""
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds ModelConfig.max_len={self.max_len}: "
                f"shorten the input or raise max_len"
            )


# ---------------------------------------------------------------------- presets
# nanoGPT's shakespeare-char models (config/train_shakespeare_char.py and its documented CPU run),
# GPT-2 small (Radford et al. 2019) and GPT-3 175B (Brown et al. 2020, Table 2.1).
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=64, max_len=32, n_layers=2, d_model=32, n_heads=4),
    # nanoGPT's MLP is nn.GELU() (exact, erf) and its LayerNorm PyTorch's eps 1e-5 (issue 17, item 6)
    "shakespeare-char-cpu": ModelConfig(
        vocab_size=65, max_len=64, n_layers=4, d_model=128, n_heads=4, gelu="exact", norm_eps=1e-5
    ),
    "shakespeare-char": ModelConfig(
        vocab_size=65,
        max_len=256,
        n_layers=6,
        d_model=384,
        n_heads=6,
        dropout=0.2,
        attention_dropout=0.0,
        gelu="exact",
        norm_eps=1e-5,
    ),
    "gpt2-small": ModelConfig(
        vocab_size=50257, max_len=1024, n_layers=12, d_model=768, n_heads=12, use_bias=True, dropout=0.1
    ),
    "gpt3-175b": ModelConfig(
        vocab_size=50257,
        max_len=2048,
        n_layers=96,
        d_model=12288,
        n_heads=96,
        d_head=128,
        d_mlp=4 * 12288,
        use_bias=True,
        dtype="bfloat16",
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
