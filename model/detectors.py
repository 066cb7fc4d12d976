"""What heads do: detector scores per head and direct logit attribution per component.

Detectors (TransformerLens's ``head_detector`` with ``error_measure='mul'``): for a detection pattern
``D [T, T]`` of 0/1 (lower triangular) and a head's attention pattern ``P [Q, K]``, the score is
``sum(P * D) / sum(P)`` per sequence, averaged over the batch. The patterns:
  * previous token: ``D[i, i-1] = 1``;
  * duplicate token: ``D[i, j] = 1`` for ``j < i`` with ``tokens[j] == tokens[i]``;
  * induction: ``D[i, j] = 1`` for ``j <= i`` with ``tokens[j-1] == tokens[i]``, ``j - 1 != i`` (the
    duplicate pattern shifted one key to the right).
Prefix matching (Olsson et al. 2022): on a random sequence repeated twice, ``[r, r]`` of length 2n,
the mean attention of each query of the second half to the token after its earlier occurrence
(``i -> i - n + 1``); 1 for a perfect induction head. TransformerLens's induction score on the same
tokens averages over every query, the first half's too, so it is about half of it.

Direct logit attribution: the final residual stream is a sum of components (token and position
embeddings, every head's ``z_h @ value_up[h]``, every layer's attention output bias, every MLP's
output); the final norm, with its scale ``s = sqrt(var + eps)`` frozen at the real run's value, is
linear in it, so the target token's logit is the sum of each component's ``norm(c) . W_U[:, target]``
plus the norm's bias term. :func:`logit_attribution` returns every term and checks the sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from model import hooks
from model.transformer import Transformer

KINDS = ("previous_token", "duplicate_token", "induction")


def detection_pattern(tokens: jax.Array, kind: str) -> jax.Array:
    """The 0/1 pattern ``[B, T, T]`` a perfect ``kind`` head would have on ``tokens`` ``[B, T]``."""
    b, t = tokens.shape
    i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    if kind == "previous_token":
        return jnp.broadcast_to((j == i - 1).astype(jnp.float32), (b, t, t))
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, Q, K]
    if kind == "duplicate_token":
        return (same & (j < i)).astype(jnp.float32)
    if kind == "induction":
        prev_same = jnp.pad(same[:, :, :-1], ((0, 0), (0, 0), (1, 0)))  # key j: tokens[j-1] == tokens[i]
        return (prev_same & (j <= i) & (j - 1 != i)).astype(jnp.float32)
    raise ValueError(f"unknown detector {kind!r}; choose one of {KINDS}")


def head_scores(patterns: jax.Array, tokens: jax.Array, kind: str) -> jax.Array:
    """Scores ``[L, H]`` from patterns ``[L, B, H, T, T]`` (see the module docstring)."""
    d = detection_pattern(tokens, kind)[None, :, None]
    per_seq = jnp.sum(patterns * d, axis=(-2, -1)) / jnp.sum(patterns, axis=(-2, -1))  # [L, B, H]
    return per_seq.mean(axis=1)


def prefix_matching(patterns: jax.Array, n: int, start: int = 0) -> jax.Array:
    """Olsson et al.'s prefix-matching score ``[L, H]`` on ``[prefix (start tokens), r, r]`` with ``|r| = n``."""
    q = jnp.arange(start + n, start + 2 * n)
    return patterns[..., q, q - n + 1].mean(axis=(1, -1))  # mean over batch and second-half queries


def repeated_random_tokens(key: jax.Array, batch: int, n: int, vocab_size: int) -> jax.Array:
    """``[B, 2n]``: random tokens, then the same again (the induction probe)."""
    r = jax.random.randint(key, (batch, n), 0, vocab_size)
    return jnp.concatenate([r, r], axis=1)


def stacked_patterns(cache: dict, n_layers: int) -> jax.Array:
    return jnp.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(n_layers)])


def detector_table(model: Transformer, params, key: jax.Array, *, batch: int = 8, n: int | None = None) -> dict:
    """Every detector's ``[L, H]`` scores on repeated random tokens ``[B, 2n]`` (n: half the context)."""
    cfg = model.config
    n = n or cfg.max_len // 2
    tokens = repeated_random_tokens(key, batch, n, cfg.vocab_size)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(cfg.n_layers)]
    _, cache = hooks.run_with_cache(model, params, tokens, names)
    p = stacked_patterns(cache, cfg.n_layers)
    table = {kind: head_scores(p, tokens, kind) for kind in KINDS}
    table["prefix_matching"] = prefix_matching(p, n)
    return table


def _final_norm(model: Transformer, params, resid: jax.Array):
    """The final norm as a linear map with its scale frozen at ``resid``: (apply(c), bias)."""
    cfg = model.config
    p = params["norm_final"]
    if cfg.norm == "layernorm":
        centered = resid - resid.mean(-1, keepdims=True)
        s = jnp.sqrt(jnp.mean(centered**2, -1, keepdims=True) + cfg.norm_eps)
        return (lambda c: (c - c.mean(-1, keepdims=True)) / s * p["scale"]), p.get("bias")
    s = jnp.sqrt(jnp.mean(resid**2, -1, keepdims=True) + cfg.norm_eps)
    return (lambda c: c / s * p["scale"]), None


def logit_attribution(model: Transformer, params, tokens: jax.Array, targets: jax.Array | None = None) -> dict:
    """Direct logit attribution of each component to the ``targets`` logit (default: the next token).

    Returns ``[B, T']`` arrays (T' = T - 1 for next-token targets): 'embed', 'pos_embed', 'norm_bias',
    'logit' (the real logit) and 'residual' (logit minus the sum of all terms: ~0); ``[L, B, T', H]``
    'heads'; ``[L, B, T']`` 'attn_bias' and 'mlp'. The per-head table is ``heads.mean((1, 2))``.
    """
    cfg = model.config
    model, params = hooks.unrolled(model, params)
    logits, cache = hooks.run_with_cache(model, params, tokens)
    if targets is None:
        targets, keep = tokens[:, 1:], slice(0, tokens.shape[1] - 1)
    else:
        keep = slice(None)
    last = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][:, keep]
    norm, bias = _final_norm(model, params, last)
    w_u = params["embed"]["embedding"] if cfg.tie_embeddings else params["unembed"].T  # [V, D]
    u = w_u[targets]  # [B, T', D]: the target token's unembedding direction

    def dla(c):  # [B, T', ..., D] -> [B, T', ...]
        c = jnp.moveaxis(c, -2, 0) if c.ndim == 4 else c
        out = jnp.sum(norm(c) * u, axis=-1)
        return jnp.moveaxis(out, 0, -1) if c.ndim == 4 else out

    out = {"embed": dla(cache["hook_embed"][:, keep])}
    out["pos_embed"] = (
        dla(cache["hook_pos_embed"][:, keep]) if "hook_pos_embed" in cache else jnp.zeros_like(out["embed"])
    )
    heads, attn_bias, mlp = [], [], []
    for i in range(cfg.n_layers):
        p = params[f"block_{i}"]["attention"]
        z = cache[f"blocks.{i}.attn.hook_z"][:, keep]  # [B, T', H, Dh]
        per_head = z if cfg.value_map == "full" else jnp.einsum("bthe,hed->bthd", z, p["value_up"])
        heads.append(dla(per_head))
        b_o = p.get("value_up_bias")
        attn_bias.append(dla(jnp.broadcast_to(b_o, last.shape)) if b_o is not None else jnp.zeros_like(out["embed"]))
        has_mlp = f"blocks.{i}.hook_mlp_out" in cache
        mlp.append(dla(cache[f"blocks.{i}.hook_mlp_out"][:, keep]) if has_mlp else jnp.zeros_like(out["embed"]))
    out["heads"], out["attn_bias"], out["mlp"] = jnp.stack(heads), jnp.stack(attn_bias), jnp.stack(mlp)
    out["norm_bias"] = jnp.sum(bias * u, -1) if bias is not None else jnp.zeros_like(out["embed"])
    out["logit"] = jnp.take_along_axis(logits[:, keep], targets[..., None], -1)[..., 0]
    total = out["embed"] + out["pos_embed"] + out["norm_bias"]
    total = total + out["heads"].sum((0, -1)) + out["attn_bias"].sum(0) + out["mlp"].sum(0)
    out["residual"] = out["logit"] - total
    return out
