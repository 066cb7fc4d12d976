"""ModelConfig validation: every invalid config raises one ValueError that names the field; presets; max_len."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from model.config import PRESETS, ModelConfig, get_preset
from model.transformer import Transformer

TINY = get_preset("tiny")


def test_defaults_and_presets_are_valid_and_round_trip():
    assert {"tiny", "shakespeare-char-cpu", "shakespeare-char", "gpt2-small", "gpt3-175b"} <= set(PRESETS)
    for name, cfg in PRESETS.items():
        assert get_preset(name) is cfg
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name
    ModelConfig()  # the defaults are a valid config


def test_derived_sizes():
    cfg = ModelConfig(d_model=64, n_heads=8)
    assert (cfg.head_dim, cfg.kv_heads, cfg.mlp_dim) == (8, 8, 256)
    cfg = cfg.replace(d_head=16, n_kv_heads=2, d_mlp=100)
    assert (cfg.head_dim, cfg.kv_heads, cfg.mlp_dim) == (16, 2, 100)
    gpt3 = get_preset("gpt3-175b")
    assert (gpt3.n_layers, gpt3.d_model, gpt3.n_heads, gpt3.head_dim) == (96, 12288, 96, 128)


def test_replace_returns_a_validated_copy():
    cfg = TINY.replace(n_layers=3, positions="rotary")
    assert (cfg.n_layers, cfg.positions) == (3, "rotary") and TINY.n_layers == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 4


def _raises_naming(field: str, **changes):
    """The config with ``changes`` raises a one-line ValueError whose message names ``field``."""
    with pytest.raises(ValueError) as info:
        TINY.replace(**changes)
    msg = str(info.value)
    assert field in msg and "\n" not in msg, msg
    return msg


def test_heads_that_do_not_divide_the_width():
    msg = _raises_naming("n_heads", d_model=30, n_heads=4)
    assert "d_model" in msg
    TINY.replace(d_model=30, n_heads=4, d_head=8)  # an explicit head width lifts the constraint


POSITIVE = ["vocab_size", "max_len", "n_layers", "d_model", "n_heads", "rope_base", "init_std"]
POSITIVE_OR_NONE = ["d_head", "n_kv_heads", "d_mlp", "sliding_window"]


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("field", POSITIVE + POSITIVE_OR_NONE)
def test_non_positive_sizes(field, value):
    _raises_naming(field, **{field: value})


def test_n_heads_must_be_a_multiple_of_n_kv_heads():
    _raises_naming("n_kv_heads", n_heads=4, n_kv_heads=3)
    _raises_naming("n_kv_heads", n_heads=4, n_kv_heads=8)
    for g in (1, 2, 4):
        assert TINY.replace(n_kv_heads=g).kv_heads == g


def test_unknown_preset():
    with pytest.raises(ValueError, match="'gpt5'.*tiny"):
        get_preset("gpt5")


def test_unknown_field():
    with pytest.raises(ValueError, match="'n_layer'"):
        TINY.replace(n_layer=3)
    with pytest.raises(ValueError, match="'dropuot'"):
        ModelConfig.from_dict({**TINY.to_dict(), "dropuot": 0.1})


@pytest.mark.parametrize(
    "field,value",
    [
        ("d_model", "128"),  # str for int
        ("n_layers", True),  # bool for int (bool is an int subclass in Python)
        ("d_model", 32.0),  # float for int
        ("n_kv_heads", "2"),
        ("sliding_window", False),
        ("dropout", "0.1"),
        ("dropout", True),
        ("init_std", None),
        ("mlp", 1),  # int for bool
        ("causal", "yes"),
        ("positions", 1),
        ("dtype", jnp.bfloat16),  # dtypes are named by strings, to round-trip through JSON
    ],
)
def test_wrong_types(field, value):
    _raises_naming(field, **{field: value})


def test_wrong_types_from_dict():
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig.from_dict({**TINY.to_dict(), "n_heads": "4"})


@pytest.mark.parametrize(
    "field,value",
    [
        ("positions", "rope"),
        ("norm", "batchnorm"),
        ("value_map", "low_rank"),
        ("dtype", "fp16"),
        ("param_dtype", "float64"),
        ("remat", "all"),
        ("attention_impl", "flash"),
    ],
)
def test_bad_enum_strings(field, value):
    msg = _raises_naming(field, **{field: value})
    assert repr(value) in msg  # and says what was given


@pytest.mark.parametrize("field", ["dropout", "attention_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range(field, value):
    _raises_naming(field, **{field: value})


def test_dropout_in_range_is_accepted():
    assert TINY.replace(dropout=0, attention_dropout=0.5).attention_dropout == 0.5


def test_rotary_needs_an_even_head_width():
    _raises_naming("d_head", positions="rotary", d_head=3)
    _raises_naming("d_head", positions="rotary", d_model=12, n_heads=4)  # implied head width 3
    TINY.replace(positions="learned", d_model=12, n_heads=4)  # odd widths are fine without rotary


@pytest.mark.parametrize("scan", [True, False])
def test_sequence_longer_than_max_len_raises_before_compiling(scan):
    cfg = TINY.replace(scan_layers=scan)
    model = Transformer(cfg)
    too_long = jnp.zeros((1, cfg.max_len + 1), jnp.int32)
    with pytest.raises(ValueError, match=r"max_len=32") as info:
        model.init(jax.random.key(0), too_long)
    assert str(cfg.max_len + 1) in str(info.value)
    params = jax.eval_shape(model.init, jax.random.key(0), too_long[:, :-1])["params"]
    # Raised while tracing: lowering (which precedes compilation) already fails.
    with pytest.raises(ValueError, match="max_len"):
        jax.jit(model.apply).lower({"params": params}, too_long)
    with pytest.raises(ValueError, match="max_len"):
        model.apply({"params": params}, too_long)


def test_tokens_must_be_two_dimensional():
    model = Transformer(TINY)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((4,), jnp.int32))
