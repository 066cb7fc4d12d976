"""Position information: a sinusoidal table (Vaswani et al. 2017) and rotary embeddings (Su et al. 2021).

Learned positions are a parameter table in model/transformer.py; 'none' adds nothing (a causal
model can still infer positions, Haviv et al. 2022).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """``[max_len, D]`` float32: sin on even channels, cos on odd ones, wavelengths 2pi .. 10000*2pi."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
    angle = pos / np.power(10000.0, i / d_model)
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : d_model // 2])
    return table.astype(np.float32)


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotate each pair of channels of queries or keys by an angle proportional to the position.

    x ``[B, T, H, Dh]`` (Dh even); positions ``[B or 1, T]`` int. Channel pairs are (i, i + Dh/2)
    (the GPT-NeoX / Llama layout). Computed in float32, returned in x's dtype. q.k of two rotated
    vectors depends on positions only through their difference.
    """
    dh = x.shape[-1]
    half = dh // 2
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))  # [Dh/2]
    angle = positions.astype(jnp.float32)[..., None] * inv_freq  # [B|1, T, Dh/2]
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]  # [B|1, T, 1, Dh/2]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
