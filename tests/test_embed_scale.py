"""ModelConfig.embed_scale: the embedding layers' weights times sqrt(d_model) (Vaswani et al. 2017, 3.4).

Both tables are scaled: tokens, and learned positions when the model has them (so under Adam both
signals move at the same speed).

Checked against a NumPy recomputation of the embedding stage, against an unscaled model given the scaled
table (so only the lookup is scaled: the tied unembedding is not), for parameter counts, and for the
default (off) leaving every preset as it was.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import PRESETS, ModelConfig, get_preset
from model.params import analytic_counts, traced_counts
from model.positions import sinusoidal_table
from model.transformer import Transformer

B, T, V, D = 2, 8, 32, 16
CFG = ModelConfig(
    vocab_size=V, max_len=16, n_layers=2, d_model=D, n_heads=4, d_mlp=32, attention_impl="reference", init_std=0.3
)


def tokens(seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, T)), jnp.int32)


def random_params(cfg: ModelConfig, seed: int = 0):
    shapes = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), tokens())["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(cfg.init_std * rng.standard_normal(s.shape), s.dtype), shapes)


def embedding_stage(cfg: ModelConfig, params, toks):
    """What the first block receives: the output of the model's top-level Dropout (identity in eval mode)."""
    _, state = Transformer(cfg).apply(
        {"params": params},
        toks,
        capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout) and mdl.name == "Dropout_0",
        mutable=["intermediates"],
    )
    return np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary", "none"])
def test_embedding_stage_matches_numpy(positions, scale):
    cfg = CFG.replace(positions=positions, embed_scale=scale)
    params = random_params(cfg)
    toks = tokens()
    e = np.asarray(params["embed"]["embedding"], np.float64)[np.asarray(toks)]
    if scale:
        e = e * np.sqrt(D)
    if positions == "learned":  # an embedding layer too: scaled like the token table
        e = e + np.asarray(params["pos_embed"], np.float64)[:T] * (np.sqrt(D) if scale else 1.0)
    elif positions == "sinusoidal":
        e = e + np.asarray(sinusoidal_table(cfg.max_len, D), np.float64)[:T]
    np.testing.assert_allclose(embedding_stage(cfg, params, toks), e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_scaled_model_equals_unscaled_model_given_the_scaled_table(positions):
    """Scaled and tied == unscaled and untied with embedding sqrt(D) * E and unembedding E^T (not scaled)."""
    cfg = CFG.replace(positions=positions, embed_scale=True)
    params = random_params(cfg)
    toks = tokens(1)
    got = Transformer(cfg).apply({"params": params}, toks)
    table = params["embed"]["embedding"]
    naive = {**params, "embed": {"embedding": table * jnp.sqrt(jnp.float32(D))}, "unembed": table.T}
    if positions == "learned":
        naive["pos_embed"] = params["pos_embed"] * jnp.sqrt(jnp.float32(D))
    want = Transformer(cfg.replace(embed_scale=False, tie_embeddings=False)).apply({"params": naive}, toks)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    unscaled = Transformer(cfg.replace(embed_scale=False)).apply({"params": params}, toks)
    assert np.max(np.abs(np.asarray(got) - np.asarray(unscaled))) > 1e-2  # the flag does something


@pytest.mark.parametrize("preset", ["tiny", "shakespeare-char-cpu", "gpt2-small"])
def test_parameter_count_unchanged(preset):
    cfg = get_preset(preset)
    on = cfg.replace(embed_scale=True)
    assert analytic_counts(on) == analytic_counts(cfg)
    assert traced_counts(on) == traced_counts(cfg) == analytic_counts(cfg)


def test_default_off_leaves_presets_and_saved_configs_unchanged():
    assert ModelConfig().embed_scale is False
    assert all(not cfg.embed_scale for cfg in PRESETS.values())
    # a config.json written before the field existed loads with it off
    for cfg in PRESETS.values():
        old = {k: v for k, v in cfg.to_dict().items() if k != "embed_scale"}
        assert ModelConfig.from_dict(old) == cfg
    # and with it off, the runnable presets' embedding stage is the plain lookup plus positions, exactly
    for name in ("tiny", "shakespeare-char-cpu"):
        cfg = get_preset(name)
        params = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
        toks = jnp.asarray([[1, 5, 2, 7]], jnp.int32)
        want = np.asarray(params["embed"]["embedding"])[np.asarray(toks)] + np.asarray(params["pos_embed"])[:4]
        np.testing.assert_array_equal(embedding_stage(cfg, params, toks), want)


@pytest.mark.parametrize("value", [1, "true", None])
def test_embed_scale_must_be_a_bool(value):
    with pytest.raises(ValueError, match="embed_scale"):
        CFG.replace(embed_scale=value)


@pytest.mark.parametrize(
    "embed_scale, pos_init_std, want",
    [(False, None, 0.02), (True, None, 0.02 * np.sqrt(256)), (True, 0.05, 0.05), (False, 0.5, 0.5)],
)
def test_learned_position_table_starts_at_the_token_signal_scale(embed_scale, pos_init_std, want):
    """The learned table joins the (scaled) token signal, so by default it starts at that signal's scale."""
    cfg = ModelConfig(
        vocab_size=V, max_len=512, n_layers=1, d_model=256, n_heads=4, init_std=0.02,
        embed_scale=embed_scale, pos_init_std=pos_init_std, attention_impl="reference",
    )  # fmt: skip
    assert cfg.pos_table_std == pytest.approx(want)
    params = Transformer(cfg).init(jax.random.key(3), tokens())["params"]
    scale = np.sqrt(256) if embed_scale else 1.0  # under embed_scale both tables are multiplied by sqrt(d_model)
    table = np.asarray(params["pos_embed"], np.float64)  # 131072 draws: the sample std is within 1% of the true one
    assert np.std(table) * scale == pytest.approx(want, rel=0.02)
    token_table = np.asarray(params["embed"]["embedding"], np.float64)
    if pos_init_std is None:  # the default: both tables drawn alike, so both signals start on the same footing
        assert np.std(table) == pytest.approx(np.std(token_table), rel=0.15)


@pytest.mark.parametrize("embed_scale", [False, True])
def test_one_adam_step_moves_token_and_position_signals_alike(embed_scale):
    """Adam's first step moves every parameter by the learning rate (update = lr * g / |g|), so the
    signals move by lr times their table's multiplier: under embed_scale sqrt(D) for both tables.
    An unscaled position table would move sqrt(D) times slower than the token signal it joins."""
    import optax

    from model.transformer import next_token_loss

    cfg = CFG.replace(positions="learned", embed_scale=embed_scale)
    params = random_params(cfg)
    toks = tokens()

    def loss(p):
        return next_token_loss(Transformer(cfg).apply({"params": p}, toks), toks)

    lr = 1e-3
    opt = optax.adam(lr, eps=1e-30)
    updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
    new = optax.apply_updates(params, updates)

    def signals(p):  # (token signal, position signal) entering the first block
        token = embedding_stage(cfg, {**p, "pos_embed": jnp.zeros_like(p["pos_embed"])}, toks)
        return token, embedding_stage(cfg, p, toks) - token

    scale = np.sqrt(D) if embed_scale else 1.0
    for name, before, after in zip(("token", "position"), signals(params), signals(new), strict=True):
        np.testing.assert_allclose(np.abs(after - before), lr * scale, rtol=1e-3, err_msg=name)


def test_pos_init_std_must_be_positive():
    with pytest.raises(ValueError, match="pos_init_std"):
        ModelConfig(pos_init_std=0.0)
