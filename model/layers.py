"""Flax Linen modules: MultiHeadAttention, MLP and the pre-norm residual Block.

Modules own parameters and call the pure math in model/attention.py. Parameter names are the
lecture's (query, key, value_down, value_up); ``model.sharding.LOGICAL_AXES`` gives each one's logical
axis names, beside the rules that map them to mesh axes.

Mixed precision: parameters are stored in ``config.param_dtype``; matmuls run in ``config.dtype``;
the residual stream, norms, softmax and logits stay float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import attention as attn
from model import hook_points as hp
from model.config import ModelConfig
from model.positions import apply_rotary
from model.sharding import with_logical_constraint as constrain


def dtype_of(name: str):
    return jnp.dtype(name)


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


def make_norm(config: ModelConfig, name: str) -> nn.Module:
    """LayerNorm or RMSNorm over the model width, computed in float32."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(
            epsilon=config.norm_eps, dtype=jnp.float32, param_dtype=dtype_of(config.param_dtype), name=name
        )
    return nn.LayerNorm(
        epsilon=config.norm_eps,
        use_bias=config.use_bias,
        dtype=jnp.float32,
        param_dtype=dtype_of(config.param_dtype),
        name=name,
    )


class MultiHeadAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention; its output is what a block adds to the residual stream.

    Call: x ``[B, T, D]``, positions ``[B or 1, T]`` -> ``[B, T, D]``. With ``decode=True`` keys and values
    are appended to a cache (collection 'cache', ``[B, max_len, G, Dh]``) and the queries attend to
    everything cached so far. With ``sow_attention`` the pattern ``[B, H, T, K]`` is sown into
    'intermediates' under 'attention_pattern'.
    """

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False
    sow_attention: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        cfg = self.config
        d, h, g, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        cdt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        init = _normal(cfg.init_std)
        # GPT-2: the maps that write into the residual stream start smaller, by 1/sqrt(2 L).
        out_init = _normal(cfg.init_std / math.sqrt(2 * cfg.n_layers))
        zeros = nn.initializers.zeros

        query = self.param("query", init, (d, h, dh), pdt)
        key = self.param("key", init, (d, g, dh), pdt)
        if cfg.value_map == "factored":
            value_down = self.param("value_down", init, (d, g, dh), pdt)
            value_up = self.param("value_up", out_init, (h, dh, d), pdt)
        else:  # one full-rank D x D value map per head; its output is already D wide
            value_down = self.param("value", out_init, (d, g, d), pdt)
            value_up = None

        xc = x.astype(cdt)
        q, k, v = attn.project_qkv(xc, query.astype(cdt), key.astype(cdt), value_down.astype(cdt))
        # Sharding hints (no-ops outside model.sharding.use_mesh): heads split under tensor parallelism,
        # length under sequence parallelism, so the compiler gathers weights rather than activations.
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", None))
        if cfg.use_bias:
            q = q + self.param("query_bias", zeros, (h, dh), pdt).astype(cdt)
            k = k + self.param("key_bias", zeros, (g, dh), pdt).astype(cdt)
            vb = "value_down_bias" if value_up is not None else "value_bias"
            v = v + self.param(vb, zeros, v.shape[2:], pdt).astype(cdt)
        q, k, v = hp.point(self, "hook_q", q), hp.point(self, "hook_k", k), hp.point(self, "hook_v", v)
        if cfg.positions == "rotary":
            q = apply_rotary(q, positions, cfg.rope_base)
            k = apply_rotary(k, positions, cfg.rope_base)

        mask_kwargs: dict = dict(causal=cfg.causal, window=cfg.sliding_window)
        if self.decode:
            k, v, mask_kwargs = self._update_cache(k, v, mask_kwargs)

        use_dropout = cfg.attention_dropout > 0.0 and not self.deterministic
        # a cached or hooked pattern (or scores) comes from the 'reference' path, the one that returns it
        hooked = hp.active(self, "hook_pattern") or hp.active(self, "hook_attn_scores")
        want_pattern = self.sow_attention or hooked
        implementation = "reference" if (want_pattern or use_dropout) else cfg.attention_impl
        res = attn.attention(
            q,
            k,
            v,
            implementation=implementation,
            return_pattern=want_pattern,
            dropout_rate=cfg.attention_dropout if use_dropout else 0.0,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
            **mask_kwargs,
        )
        o, pattern = res if want_pattern else (res, None)
        if self.sow_attention:
            self.sow("intermediates", "attention_pattern", pattern)
        if hooked:
            hp.record(self, "hook_attn_scores", lambda: _masked_scores(q, k, mask_kwargs))
            replaced = hp.point(self, "hook_pattern", pattern)
            if replaced is not pattern:
                o = attn.weighted_values(replaced, v).astype(o.dtype)
        o = hp.point(self, "hook_z", o)
        y = attn.sum_heads(o, value_up.astype(cdt) if value_up is not None else None)
        if cfg.use_bias:
            y = y + self.param("value_up_bias", zeros, (d,), pdt).astype(cdt)
        return y.astype(jnp.float32)

    def _update_cache(self, k, v, mask_kwargs):
        """Write this call's keys/values at the cache index; attend to all that is cached so far."""
        cfg = self.config
        b, t = k.shape[:2]
        shape = (b, cfg.max_len) + k.shape[2:]
        cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, (b, cfg.max_len) + v.shape[2:], v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        i = index.value
        k_all = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
        v_all = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
        if not self.is_initializing():
            cached_k.value, cached_v.value, index.value = k_all, v_all, i + t
        mask_kwargs = dict(mask_kwargs, q_offset=i, kv_lengths=jnp.full((b,), i + t, jnp.int32))
        return k_all, v_all, mask_kwargs


def _masked_scores(q, k, mask_kwargs) -> jax.Array:
    """Scores ``[B, H, Q, K]`` as the cache shows them: q.k / sqrt(Dh), masked entries -inf (TransformerLens's rule)."""
    s = attn.attention_scores(q, k)
    mask = attn.make_mask(q.shape[1], k.shape[1], **mask_kwargs)
    return s if mask is None else jnp.where(mask, s, -jnp.inf)


class MLP(nn.Module):
    """Two-layer perceptron applied at every position: D -> d_mlp -> D with GELU (``config.gelu``)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        cdt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        zeros = nn.initializers.zeros
        fc_in = self.param("fc_in", _normal(cfg.init_std), (cfg.d_model, cfg.mlp_dim), pdt)
        fc_out = self.param(
            "fc_out", _normal(cfg.init_std / math.sqrt(2 * cfg.n_layers)), (cfg.mlp_dim, cfg.d_model), pdt
        )
        h = attn.matmul_rows(x.astype(cdt), fc_in.astype(cdt))
        if cfg.use_bias:
            h = h + self.param("fc_in_bias", zeros, (cfg.mlp_dim,), pdt).astype(cdt)
        h = hp.point(self, "hook_pre", h)
        h = hp.point(
            self, "hook_post", constrain(nn.gelu(h, approximate=cfg.gelu == "tanh"), ("batch", "length", "mlp"))
        )
        y = attn.matmul_rows(h, fc_out.astype(cdt))
        if cfg.use_bias:
            y = y + self.param("fc_out_bias", zeros, (cfg.d_model,), pdt).astype(cdt)
        return y.astype(jnp.float32)


class Block(nn.Module):
    """Pre-norm residual block: x += attention(norm(x)); x += mlp(norm(x)) (the MLP is optional).

    Call: (x ``[B, T, D]`` float32, positions ``[B or 1, T]``) -> (x, None), the signature nn.scan wants.
    """

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False
    sow_attention: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array):
        cfg = self.config
        x = constrain(x, ("batch", "length", "act_embed"))  # the residual stream; no-op outside use_mesh
        drop = nn.Dropout(rate=cfg.dropout, deterministic=self.deterministic)
        x = hp.point(self, "hook_resid_pre", x)
        h = hp.point(self, "ln1.hook_normalized", make_norm(cfg, "norm_attention")(x))
        a = MultiHeadAttention(cfg, self.deterministic, self.decode, self.sow_attention, name="attention")(h, positions)
        x = hp.point(self, "hook_resid_mid", x + drop(hp.point(self, "hook_attn_out", a)))
        if cfg.mlp:
            h = hp.point(self, "ln2.hook_normalized", make_norm(cfg, "norm_mlp")(x))
            x = x + drop(hp.point(self, "hook_mlp_out", MLP(cfg, name="mlp")(h)))
        return hp.point(self, "hook_resid_post", x), None
