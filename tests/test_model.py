"""The Transformer as a whole: causality, scan == unrolled, remat, KV-cache decoding, attention patterns,
mixed precision and dropout, on a tiny model.

Parameters are random draws shaped by ``jax.eval_shape(model.init)`` rather than ``model.init`` itself:
the shapes and dtypes are exactly those init makes, but nothing is compiled for them (compiling the
scanned initialiser costs seconds per config on CPU), and the larger init_std makes every effect
that the tests look for far larger than float32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import TOL, np_mask, np_rotary, np_softmax

from model.config import ModelConfig
from model.transformer import Transformer, attention_patterns, init_cache, next_token_loss

B, T, V = 2, 8, 32
# Rotary positions and grouped-query attention (G=2 of H=4) by default: the most intricate path. Tests share
# these shapes so that the unrolled models, run eagerly, reuse each other's compiled ops.
BASE = ModelConfig(
    vocab_size=V,
    max_len=16,
    n_layers=2,
    d_model=16,
    n_heads=4,
    n_kv_heads=2,
    d_mlp=32,
    positions="rotary",
    attention_impl="reference",
    init_std=0.3,
)
# Logits of this model are O(1-10); float32 programs that differ only in how XLA fuses or orders the same
# arithmetic (scan vs unrolled, remat, a cache read instead of a fresh key) agree to ~1e-6 relative.
LOGIT_TOL = dict(rtol=1e-5, atol=1e-5)
# Changing a later token must leave earlier logits bit-for-bit unchanged in the reference and xla paths
# (masked keys contribute exact zeros); 1e-6 only allows for a different summation order.
CAUSAL_ATOL = 1e-6
# A visible change: several orders of magnitude above rounding, far below the O(1) effects init_std=0.3 gives.
CHANGED = 1e-3


def tokens(seed=0, batch=B, length=T):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, length)), jnp.int32)


def random_params(cfg: ModelConfig, seed: int = 0):
    """Parameters with init's exact tree, shapes and dtypes; matrices N(0, init_std), norm scales near 1."""
    shapes = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), tokens(batch=1))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        x = 1.0 + 0.1 * rng.standard_normal(s.shape) if "scale" in name else cfg.init_std * rng.standard_normal(s.shape)
        return jnp.asarray(x, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def to_unrolled(params, n_layers):
    """Scanned params (a leading layer axis under 'blocks') -> unrolled ones (block_0 .. block_{L-1})."""
    out = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(n_layers):
        out[f"block_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["blocks"])
    return out


def params_for(cfg: ModelConfig, seed: int = 0):
    """The same weights for the scanned and the unrolled model (drawn for the scanned one, then converted)."""
    p = random_params(cfg.replace(scan_layers=True), seed)
    return p if cfg.scan_layers else to_unrolled(p, cfg.n_layers)


def logits_of(cfg: ModelConfig, params, toks, **kw):
    return Transformer(cfg).apply({"params": params}, toks, **kw)


# ---------------------------------------------------------------------------- causality
def _perturbed_after_each_position(seed=0):
    """Row 0 is a sequence; row 1 + t is the same sequence with every token after position t changed."""
    base = np.asarray(tokens(seed, batch=1))[0]
    rng = np.random.default_rng(seed + 1)
    rows = [base]
    for t in range(T):
        row = base.copy()
        row[t + 1 :] = (base[t + 1 :] + rng.integers(1, V, T - t - 1)) % V  # every later token differs
        rows.append(row)
    return jnp.asarray(np.stack(rows), jnp.int32)


@functools.cache
def _causality_logits(positions: str, scan: bool, causal: bool):
    cfg = BASE.replace(positions=positions, scan_layers=scan, causal=causal)
    return np.asarray(logits_of(cfg, params_for(cfg), _perturbed_after_each_position()))


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary", "none"])
def test_later_tokens_do_not_change_earlier_logits(positions, scan):
    logits = _causality_logits(positions, scan, True)
    for t in range(T):
        np.testing.assert_allclose(logits[1 + t, : t + 1], logits[0, : t + 1], rtol=0, atol=CAUSAL_ATOL, err_msg=f"{t}")
        if t < T - 1:  # the perturbation is real: the logits after t do change
            assert np.abs(logits[1 + t, t + 1 :] - logits[0, t + 1 :]).max() > CHANGED


def test_non_causal_model_lets_later_tokens_change_earlier_logits():
    """The check above can fail: without the causal mask, changing token t + 1 changes logit t."""
    logits = _causality_logits("learned", False, False)
    for t in range(T - 1):
        assert np.abs(logits[1 + t, t] - logits[0, t]).max() > CHANGED, t


# ---------------------------------------------------------------------------- scan, unroll, remat
def test_unrolled_converter_matches_unrolled_init_tree():
    cfg = BASE.replace(scan_layers=False)
    shapes = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), tokens(batch=1))["params"]
    converted = params_for(cfg)
    assert jax.tree.structure(converted) == jax.tree.structure(shapes)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), converted) == jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
    scanned = random_params(BASE)
    assert scanned["blocks"]["attention"]["query"].shape == (BASE.n_layers, 16, 4, 4)  # [L, D, H, Dh]


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary", "none"])
def test_scan_and_unrolled_give_the_same_logits(positions):
    scanned = _causality_logits(positions, True, True)
    unrolled = _causality_logits(positions, False, True)
    np.testing.assert_allclose(scanned, unrolled, **LOGIT_TOL)


def dropout_key(seed):
    # The 'rbg' generator: on CPU its bits compile in a fraction of threefry's time; the model is agnostic.
    return jax.random.key(seed, impl="rbg")


# A training step with both dropouts on: remat must replay the very same dropout masks when it recomputes a block.
REMAT_BASE = BASE.replace(dropout=0.1, attention_dropout=0.1)


@functools.cache
def _training_step(remat: str):
    """(loss, logits, gradients) of one training batch of the scanned model, with a fixed dropout key."""
    cfg = REMAT_BASE.replace(remat=remat)
    params, toks = params_for(cfg), tokens(3, length=T + 1)

    def loss(p):
        logits = Transformer(cfg).apply({"params": p}, toks[:, :-1], train=True, rngs={"dropout": dropout_key(0)})
        return next_token_loss(logits, toks[:, 1:]), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_loss_logits_and_gradients(remat):
    (want_loss, want_logits), want_grads = _training_step("none")
    (loss, logits), grads = _training_step(remat)
    np.testing.assert_allclose(loss, want_loss, **LOGIT_TOL)
    np.testing.assert_allclose(logits, want_logits, **LOGIT_TOL)
    jax.tree_util.tree_map_with_path(
        lambda path, g, w: np.testing.assert_allclose(g, w, **TOL["float32"], err_msg=jax.tree_util.keystr(path)),
        grads,
        want_grads,
    )
    # Every parameter gets a finite, nonzero gradient, through both dropouts.
    assert all(np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 1e-4 for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------- KV-cache decoding
DECODE_CONFIGS = {
    "rotary_gqa_scanned": BASE,
    "learned_gqa_unrolled_window_xla": BASE.replace(
        positions="learned", scan_layers=False, sliding_window=3, attention_impl="xla"
    ),
}


@pytest.mark.parametrize("name", list(DECODE_CONFIGS))
def test_kv_cache_decoding_matches_the_full_forward_pass(name):
    cfg = DECODE_CONFIGS[name]
    model = Transformer(cfg)
    params, toks = params_for(cfg), tokens(5)
    full = np.asarray(model.apply({"params": params}, toks))

    @jax.jit  # one compile per chunk length; eagerly, the many small ops of every step cost more
    def step(cache, chunk):
        logits, state = model.apply({"params": params, "cache": cache}, chunk, decode=True, mutable=["cache"])
        return logits, state["cache"]

    # Token by token.
    cache = init_cache(model, B)
    for t in range(T):
        logits, cache = step(cache, toks[:, t : t + 1])
        np.testing.assert_allclose(logits[:, 0], full[:, t], **LOGIT_TOL, err_msg=f"token by token, step {t}")
    # A prefill chunk of 3 tokens, then one token at a time.
    cache = init_cache(model, B)
    logits, cache = step(cache, toks[:, :3])
    np.testing.assert_allclose(logits, full[:, :3], **LOGIT_TOL, err_msg="prefill")
    for t in range(3, T):
        logits, cache = step(cache, toks[:, t : t + 1])
        np.testing.assert_allclose(logits[:, 0], full[:, t], **LOGIT_TOL, err_msg=f"after prefill, step {t}")


# ---------------------------------------------------------------------------- attention patterns
def _np_layer_norm(x, scale, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale


@pytest.mark.parametrize(
    "positions,scan", [("learned", False), ("rotary", True)], ids=["learned-unrolled", "rotary-scanned"]
)
def test_attention_patterns(positions, scan):
    cfg = BASE.replace(positions=positions, scan_layers=scan)
    params, toks = params_for(cfg), tokens(6)
    pats = np.asarray(attention_patterns(Transformer(cfg), params, toks))
    assert pats.shape == (cfg.n_layers, B, cfg.n_heads, T, T)
    np.testing.assert_allclose(pats.sum(-1), 1.0, atol=1e-6)
    assert (pats[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0.0).all()  # causal: upper triangle 0

    # Layer 0 recomputed by hand in float64 from the parameters.
    p = params_for(cfg.replace(scan_layers=False))  # the same weights, one block per key
    blk = jax.tree.map(lambda a: np.asarray(a, np.float64), p["block_0"])
    x = np.asarray(p["embed"]["embedding"], np.float64)[np.asarray(toks)]  # [B, T, D]
    if positions == "learned":
        x = x + np.asarray(p["pos_embed"], np.float64)[:T]
    h = _np_layer_norm(x, blk["norm_attention"]["scale"])
    q = np.einsum("btd,dhe->bthe", h, blk["attention"]["query"])
    k = np.einsum("btd,dge->btge", h, blk["attention"]["key"])
    if positions == "rotary":
        q, k = np_rotary(q, np.arange(T)[None]), np_rotary(k, np.arange(T)[None])
    k = np.repeat(k, cfg.n_heads // cfg.kv_heads, axis=2)  # query head h reads key head h // (H / G)
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(cfg.head_dim)
    want = np_softmax(s, np_mask(B, T, T, causal=True))
    np.testing.assert_allclose(pats[0], want, **TOL["float32"])


def test_attention_patterns_of_a_non_causal_model_fill_the_upper_triangle():
    cfg = BASE.replace(causal=False, scan_layers=False)
    pats = np.asarray(attention_patterns(Transformer(cfg), params_for(cfg), tokens(6)))
    np.testing.assert_allclose(pats.sum(-1), 1.0, atol=1e-6)
    assert (pats[..., 0, 1:] > 0).all()


# ---------------------------------------------------------------------------- mixed precision
# bfloat16 matmuls round their inputs to 8 significant bits (relative error 2**-9 per rounding); through two
# blocks and the unembedding the logits (max |logit| ~ 10 here) move by ~1% of their scale. 5% of the
# largest logit, with a floor for tiny logits, is the stated bound.
BF16_LOGIT_TOL = 0.05


def test_bfloat16_compute_keeps_float32_params_and_logits_close_to_float32():
    cfg32 = BASE.replace(scan_layers=False)
    cfg16 = cfg32.replace(dtype="bfloat16")
    shapes = jax.eval_shape(Transformer(cfg16).init, jax.random.key(0), tokens(batch=1))["params"]
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes)), "param_dtype float32 keeps params float32"
    params, toks = params_for(cfg32), tokens(7)
    l32 = np.asarray(logits_of(cfg32, params, toks))
    l16 = jax.jit(Transformer(cfg16).apply)({"params": params}, toks)
    assert l16.dtype == jnp.float32 and np.isfinite(np.asarray(l16)).all()
    err = np.abs(np.asarray(l16) - l32).max()
    assert err <= BF16_LOGIT_TOL * max(np.abs(l32).max(), 1.0), err
    assert err > 0, "dtype='bfloat16' must actually compute in bfloat16"


# ---------------------------------------------------------------------------- dropout
def test_dropout_depends_on_the_rng_only_in_training():
    cfg = BASE.replace(scan_layers=False, dropout=0.2)
    params, toks = params_for(cfg), tokens(8)
    model = Transformer(cfg)

    def run(seed, train=True):
        return np.asarray(model.apply({"params": params}, toks, train=train, rngs={"dropout": dropout_key(seed)}))

    a, a_again, b = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(a - b).max() > CHANGED
    eval_out = np.asarray(model.apply({"params": params}, toks))  # no rng needed outside training
    np.testing.assert_array_equal(run(0, train=False), eval_out)
    np.testing.assert_allclose(eval_out, logits_of(cfg.replace(dropout=0.0), params, toks), **LOGIT_TOL)
    assert np.abs(a - eval_out).max() > CHANGED


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_attention_dropout_in_training(impl):
    """attention_dropout > 0 trains with any implementation: the dropped pattern forces the reference path."""
    cfg = BASE.replace(scan_layers=False, attention_dropout=0.3, attention_impl=impl)
    params, toks = params_for(cfg), tokens(9)
    model = Transformer(cfg)

    def run(seed):
        return np.asarray(model.apply({"params": params}, toks, train=True, rngs={"dropout": dropout_key(seed)}))

    a, a_again, b = run(0), run(0), run(1)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(a - b).max() > CHANGED
    np.testing.assert_allclose(
        model.apply({"params": params}, toks), logits_of(cfg.replace(attention_dropout=0.0), params, toks), **LOGIT_TOL
    )
    # Gradients of training steps with attention dropout: test_remat_gives_the_same_loss_logits_and_gradients.
