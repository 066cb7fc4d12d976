"""The core every attention path shares: the mask rule, and the block steps of the online softmax.

One mask rule (:func:`visible`) says which (query, key) pairs may attend, from absolute positions:
the dense masks of model/attention.py apply it to whole ``[Q, K]`` grids, the chunked kernel to one
block at a time (:class:`MaskInfo`, which also bounds the blocks worth visiting), ring attention to
the pair of blocks a device holds.

The block steps are the flash-attention recurrence (Milakov & Gimelshein 2018; Dao et al. 2022, 2023),
written once for any layout whose scores have the keys on the last axis::

    m, l, acc = online_softmax_update(m, l, acc, s, pv)    # fold one block of scores in
    out, lse = finalize(m, l, acc)                          # acc / l and the rows' log-sum-exp
    p, ds = pattern_and_score_grads(s, lse, dp, delta)      # backward: p = exp(s - lse), ds = p (dp - delta)

Axis letters as in model/attention.py. Nothing here imports the rest of the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

Array = jax.Array


def default_scale(head_dim: int) -> float:
    """1 / sqrt(Dh): keeps the scores' variance near 1 when q and k have unit-variance entries."""
    return 1.0 / math.sqrt(head_dim)


# ---------------------------------------------------------------------------- the mask rule
def visible(
    q_pos: Array,
    k_pos: Array,
    *,
    causal: bool = False,
    window: int | None = None,
    k_len: int | None = None,
    kv_lengths: Array | None = None,
) -> Array | None:
    """May the query at absolute position ``q_pos`` attend to the key at ``k_pos``? (None: every pair may.)

    Int arrays that broadcast against each other (the caller shapes them, e.g. ``[Q, 1]`` and ``[1, K]``).
    ``causal``: no later token speaks to an earlier one (``k_pos <= q_pos``). ``window``: keys less than
    ``window`` positions away, itself included (causal: ``q_pos - window < k_pos <= q_pos``, Mistral's
    local attention; otherwise ``|q_pos - k_pos| < window``). ``k_len``: keys at or beyond it are padding
    added to fill a block. ``kv_lengths``: real keys per sequence, shaped to broadcast (e.g. ``[B, 1, 1]``).
    """
    keep = None if k_len is None else k_pos < k_len

    def both(a, b):
        return b if a is None else a & b

    if causal:
        keep = both(keep, k_pos <= q_pos)
    if window is not None:
        keep = both(keep, k_pos > q_pos - window)
        if not causal:
            keep = keep & (k_pos < q_pos + window)
    if kv_lengths is not None:
        keep = both(keep, k_pos < kv_lengths)
    return keep


@dataclass(frozen=True)
class MaskInfo:
    """The mask of a blocked kernel: the rule's static parts and its dynamic int32 arrays.

    q_offset: ``[B or 1]`` absolute position of query 0; kv_lengths: ``[B]`` or None; k_len: real number
    of keys (keys at or beyond it are padding added to fill a block); causal / window as in :func:`visible`.
    """

    causal: bool
    window: int | None
    k_len: int
    q_offset: Array
    kv_lengths: Array | None

    def block(self, q_pos: Array, k_pos: Array) -> Array:
        """Which pairs of one block may attend: q_pos ``[B or 1, Rq]`` and k_pos ``[bk]`` absolute positions.

        Returns bool ``[B or 1, 1, Rq, bk]`` (True keeps), broadcasting over the kv-head axis of the scores.
        """
        kv = None if self.kv_lengths is None else self.kv_lengths[:, None, None, None]
        return visible(
            q_pos[:, None, :, None],
            k_pos[None, None, None, :],
            causal=self.causal,
            window=self.window,
            k_len=self.k_len,
            kv_lengths=kv,
        )

    def key_range(self, q_min: Array, q_max: Array) -> tuple[Array, Array]:
        """Keys ``[lo, hi)`` that some query with position in ``[q_min, q_max]`` may see (any batch row)."""
        lo = jnp.int32(0)
        hi = jnp.int32(self.k_len)
        if self.causal:
            hi = jnp.minimum(hi, q_max + 1)
        elif self.window is not None:
            hi = jnp.minimum(hi, q_max + self.window)
        if self.window is not None:
            lo = jnp.maximum(lo, q_min - self.window + 1)
        if self.kv_lengths is not None:
            hi = jnp.minimum(hi, jnp.max(self.kv_lengths))
        return lo, jnp.maximum(hi, lo)

    def full_range(self, q_min: Array, q_max: Array, block: int) -> tuple[Array, Array]:
        """Key blocks ``[f_lo, f_hi)`` (of size ``block``) that every query in ``[q_min, q_max]`` sees wholly.

        Blocks outside it are partly (or wholly) masked; the visible set is an interval because each
        mask bounds the keys from below or from above.
        """
        first = jnp.int32(0)  # smallest key every query sees
        last = jnp.int32(self.k_len - 1)  # largest key every query sees
        if self.causal:
            last = jnp.minimum(last, q_min)
        if self.window is not None:
            first = jnp.maximum(first, q_max - self.window + 1)
            if not self.causal:
                last = jnp.minimum(last, q_min + self.window - 1)
        if self.kv_lengths is not None:
            last = jnp.minimum(last, jnp.min(self.kv_lengths) - 1)
        f_lo = (first + block - 1) // block
        f_hi = jnp.maximum((last + 1) // block, 0)
        return f_lo, f_hi


# ---------------------------------------------------------------------------- the block steps
def online_softmax_update(
    m: Array, l: Array, acc: Array, s: Array, pv: Callable[[Array], Array]
) -> tuple[Array, Array, Array]:
    """Fold one block of (already masked, -inf = masked) scores into the running softmax.

    m, l: running row max and row sum of exp(s - m); acc: running sum of exp(s - m) v (float32; rows
    ``[..., Rq]``, acc ``[..., Rq, Dv]``). s: ``[..., Rq, bk]`` float32 scores of the block. ``pv(p)`` is
    the block's ``p @ v`` in the caller's layout. A row that has seen only masked keys keeps m = -inf,
    l = 0, acc = 0 (never NaN).
    """
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # all masked so far: exp(-inf - 0) = 0, not NaN
    alpha = jnp.exp(m - m_use)  # rescales what was accumulated under the old max
    p = jnp.exp(s - m_use[..., None])
    l = alpha * l + jnp.sum(p, axis=-1)
    return m_new, l, alpha[..., None] * acc + pv(p)


def finalize(m: Array, l: Array, acc: Array) -> tuple[Array, Array]:
    """Output ``acc / l`` (0 for wholly masked rows) and log-sum-exp ``m + log l`` (+inf for them)."""
    alive = l > 0.0
    out = acc / jnp.where(alive, l, 1.0)[..., None]
    lse = jnp.where(alive, m + jnp.log(jnp.where(alive, l, 1.0)), jnp.inf)
    return out, lse


def pattern_and_score_grads(s: Array, lse: Array, dp: Array, delta: Array) -> tuple[Array, Array]:
    """The backward of one block (FlashAttention-2): its pattern recomputed, and the scores' gradient.

    s: the block's masked scores (-inf = masked); lse, delta (``rowsum(do * out)``) broadcast against s
    along its query axis (+inf lse, a row that sees no key, gives p = 0); dp = do v^T in s's layout.
    Returns p = exp(s - lse) and ds = p * (dp - delta).
    """
    p = jnp.exp(s - lse)
    return p, p * (dp - delta)
