"""Ring attention: exact attention over a sequence sharded across devices (Liu, Zaharia & Abbeel 2023).

The length axis of q, k and v is split over the ``'sequence'`` mesh axis into n blocks of T/n tokens.
Device i keeps its block of queries and passes its key/value block to device i+1 n-1 times, so that
every query block meets every key/value block once; the partial results are merged with the online
softmax of flash attention (running max m, running sum l, unnormalised output). No device ever holds
more than two key/value blocks or a ``[T/n, T/n]`` block of scores.

The backward pass is a ``jax.custom_vjp``: it stores only the output and the logsumexp per query
(not the n x n blocks of probabilities), rotates k and v around the ring again together with their
gradient accumulators dk, dv, recomputes each block's pattern from the logsumexp, and after n hops
each dk, dv is back on the device that owns its block.

Causal (and sliding-window, padding) masks are computed from global positions; a block that is
wholly masked (in causal attention: a key/value block from later positions than the query block) is
skipped with ``lax.cond``. With contiguous blocks the causal work is unbalanced (device 0 computes
one block, device n-1 computes n); striped or zig-zag layouts balance it and are not done here.

Entry points:

    out = ring_attention(q, k, v, mesh, causal=True)            # q [B,T,H,Dh], k/v [B,T,G,Dh] global

    with jax.set_mesh(mesh):                                    # or model.sharding.use_mesh(mesh, rules)
        attention(q, k, v, causal=True, implementation="ring")  # the registered implementation

Axis letters as in model/attention.py: B batch, T length (Q queries, K keys per block), H query heads,
G key/value heads (G divides H; R = H / G queries per key/value head), Dh head width.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import einops
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from model.kernels.blocks import default_scale, finalize, online_softmax_update, pattern_and_score_grads, visible

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _RingCfg:
    """The static (hashable) arguments of one ring-attention call."""

    axis_name: str
    causal: bool
    window: int | None
    scale: float
    q_offset: int


# ---------------------------------------------------------------------------- one block
def _block_mask(cfg: _RingCfg, q_block, kv_block, q_len, k_len, kv_lengths, q_lengths):
    """Which (query, key) pairs of this pair of blocks may attend: ``[B or 1, Q, K]`` bool, or None.

    q_block / kv_block are the (traced) indices of the blocks along the ring; positions are global,
    the rule is :func:`model.kernels.blocks.visible`; padded queries (``q_lengths``) are masked whole.
    """
    qi = q_block * q_len + jnp.arange(q_len, dtype=jnp.int32)  # global query index  [Q]
    qp = (cfg.q_offset + qi)[None, :, None]  # query positions [1, Q, 1]
    kp = (kv_block * k_len + jnp.arange(k_len, dtype=jnp.int32))[None, None, :]  # key positions [1, 1, K]
    kv = None if kv_lengths is None else kv_lengths[:, None, None]  # [B, 1, 1]
    keep = visible(qp, kp, causal=cfg.causal, window=cfg.window, kv_lengths=kv)
    if q_lengths is not None:
        pad = qi[None, :, None] < q_lengths[:, None, None]  # [B, Q, 1]
        keep = pad if keep is None else keep & pad
    return keep


def _scores(cfg, q, k, mask):
    """Scores of one block pair in float32: q ``[B,Q,G,R,Dh]``, k ``[B,K,G,Dh]`` -> ``[B,Q,G,R,K]``."""
    s = jnp.einsum("bqgrd,bkgd->bqgrk", q, k, preferred_element_type=jnp.float32) * jnp.float32(cfg.scale)
    if mask is not None:
        s = jnp.where(mask[:, :, None, None, :], s, -jnp.inf)
    return s


def _forward_block(cfg, q, k, v, mask, m, l, acc):
    """Fold one key/value block into the running (max m, sum l, output acc) of the online softmax.

    m, l ``[B,Q,G,R]`` float32; acc ``[B,Q,G,R,Dv]`` float32 (unnormalised); the step is
    :func:`model.kernels.blocks.online_softmax_update`.
    """

    def pv(p):
        return jnp.einsum("bqgrk,bkgd->bqgrd", p, v, preferred_element_type=jnp.float32)

    return online_softmax_update(m, l, acc, _scores(cfg, q, k, mask), pv)


def _backward_block(cfg, q, k, v, do, lse, delta, mask, dq, dk, dv):
    """Add one block pair's share to dq ``[B,Q,G,R,Dh]``, dk ``[B,K,G,Dh]``, dv ``[B,K,G,Dv]`` (float32).

    The pattern and the scores' gradient come from :func:`model.kernels.blocks.pattern_and_score_grads`
    (lse = +inf for a query that sees no key: p = 0).
    """
    s = _scores(cfg, q, k, mask)
    dp = jnp.einsum("bqgrd,bkgd->bqgrk", do, v, preferred_element_type=jnp.float32)
    p, ds = pattern_and_score_grads(s, lse[..., None], dp, delta[..., None])
    dv = dv + jnp.einsum("bqgrk,bqgrd->bkgd", p, do, preferred_element_type=jnp.float32)
    ds = ds * jnp.float32(cfg.scale)
    dq = dq + jnp.einsum("bqgrk,bkgd->bqgrd", ds, k, preferred_element_type=jnp.float32)
    dk = dk + jnp.einsum("bqgrk,bqgrd->bkgd", ds, q, preferred_element_type=jnp.float32)
    return dq, dk, dv


def _maybe(mask, compute, skip, *operands):
    """compute(*operands) unless the block is wholly masked (then skip(*operands)); no cond without a mask."""
    if mask is None:
        return compute(*operands)
    return lax.cond(jnp.any(mask), compute, skip, *operands)


# ---------------------------------------------------------------------------- the ring (per device)
def _varying(cfg, x):
    # Accumulators start as constants, identical on every device; mark them as differing along the
    # ring so that both branches of the skip-cond and the loop carry have one type.
    return lax.pcast(x, cfg.axis_name, to="varying")


def _ring_perm(n: int):
    return [(i, (i + 1) % n) for i in range(n)]  # device i sends to device i + 1


def _ring_forward(cfg: _RingCfg, q, k, v, lengths):
    """Per-device forward. q ``[B,Q,G,R,Dh]``, k ``[B,K,G,Dh]``, v ``[B,K,G,Dv]`` (this device's blocks).

    Returns out ``[B,Q,G,R,Dv]`` in q's dtype and lse ``[B,Q,G,R]`` float32 (+inf where no key is seen).
    """
    kv_lengths, q_lengths = lengths
    n = lax.axis_size(cfg.axis_name)
    me = lax.axis_index(cfg.axis_name)
    b, q_len, g, r, _ = q.shape
    k_len, dv = k.shape[1], v.shape[-1]
    m = _varying(cfg, jnp.full((b, q_len, g, r), -jnp.inf, jnp.float32))
    l = _varying(cfg, jnp.zeros((b, q_len, g, r), jnp.float32))
    acc = _varying(cfg, jnp.zeros((b, q_len, g, r, dv), jnp.float32))

    def fold(step, k, v, m, l, acc):
        kv_block = (me - step) % n  # at step s this device holds the block that started s hops back
        mask = _block_mask(cfg, me, kv_block, q_len, k_len, kv_lengths, q_lengths)
        return _maybe(
            mask,
            lambda m, l, acc: _forward_block(cfg, q, k, v, mask, m, l, acc),
            lambda m, l, acc: (m, l, acc),
            m,
            l,
            acc,
        )

    def body(step, carry):
        k, v, m, l, acc = carry
        m, l, acc = fold(step, k, v, m, l, acc)
        # Pass the key/value block on; XLA can overlap this transfer with the next block's compute.
        k, v = lax.ppermute((k, v), cfg.axis_name, _ring_perm(n))
        return k, v, m, l, acc

    k, v, m, l, acc = lax.fori_loop(0, n - 1, body, (k, v, m, l, acc))
    m, l, acc = fold(n - 1, k, v, m, l, acc)  # the last block needs no further hop
    out, lse = finalize(m, l, acc)  # a query that sees no key gets 0, never NaN
    return out.astype(q.dtype), lse


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg: _RingCfg, q, k, v, lengths):
    return _ring_forward(cfg, q, k, v, lengths)[0]


def _ring_fwd(cfg, q, k, v, lengths):
    out, lse = _ring_forward(cfg, q, k, v, lengths)
    return out, (q, k, v, lengths, out, lse)


def _ring_bwd(cfg, residuals, d_out):
    q, k, v, lengths, out, lse = residuals
    kv_lengths, q_lengths = lengths
    n = lax.axis_size(cfg.axis_name)
    me = lax.axis_index(cfg.axis_name)
    q_len, k_len = q.shape[1], k.shape[1]
    do = d_out.astype(jnp.float32)
    delta = jnp.sum(do * out.astype(jnp.float32), axis=-1)  # [B,Q,G,R]
    dq = _varying(cfg, jnp.zeros(q.shape, jnp.float32))
    dk = _varying(cfg, jnp.zeros(k.shape, jnp.float32))
    dv = _varying(cfg, jnp.zeros(v.shape, jnp.float32))

    def fold(step, k, v, dq, dk, dv):
        kv_block = (me - step) % n
        mask = _block_mask(cfg, me, kv_block, q_len, k_len, kv_lengths, q_lengths)
        return _maybe(
            mask,
            lambda dq, dk, dv: _backward_block(cfg, q, k, v, do, lse, delta, mask, dq, dk, dv),
            lambda dq, dk, dv: (dq, dk, dv),
            dq,
            dk,
            dv,
        )

    def body(step, carry):
        k, v, dq, dk, dv = carry
        dq, dk, dv = fold(step, k, v, dq, dk, dv)
        # dk, dv travel with their key/value block and collect every query block's share on the way.
        k, v, dk, dv = lax.ppermute((k, v, dk, dv), cfg.axis_name, _ring_perm(n))
        return k, v, dq, dk, dv

    k, v, dq, dk, dv = lax.fori_loop(0, n - 1, body, (k, v, dq, dk, dv))
    dq, dk, dv = fold(n - 1, k, v, dq, dk, dv)
    dk, dv = lax.ppermute((dk, dv), cfg.axis_name, _ring_perm(n))  # the n-th hop brings them home
    zero_lengths = jax.tree.map(lambda _: None, lengths)  # integer inputs have no cotangent
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), zero_lengths


_ring.defvjp(_ring_fwd, _ring_bwd)


# ---------------------------------------------------------------------------- global entry point
def ring_attention(
    q: Array,
    k: Array,
    v: Array,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
    *,
    axis_name: str = "sequence",
    causal: bool = False,
    scale: float | None = None,
    q_offset: int = 0,
    window: int | None = None,
    kv_lengths: Array | None = None,
    q_lengths: Array | None = None,
) -> Array:
    """Exact attention with the length axis sharded over the mesh axis ``axis_name``.

    q ``[B, T, H, Dh]``, k ``[B, T, G, Dh]``, v ``[B, T, G, Dv]`` (G divides H) are global arrays; T must be
    divisible by the size n of ``axis_name``. Masks mean what they mean in :func:`model.attention.attention`
    (``causal`` with an int ``q_offset``, sliding ``window``, padding ``kv_lengths`` / ``q_lengths`` ``[B]``).
    ``mesh`` defaults to the one set by ``jax.set_mesh`` (or ``model.sharding.use_mesh``). Only
    ``axis_name`` is manual inside: batch and head axes keep whatever sharding the compiler gives them.
    Returns ``[B, T, H, Dv]`` in q's dtype, sharded like q along the length. Differentiable (custom VJP).
    """
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or axis_name not in mesh.axis_names:
        names = () if mesh is None else tuple(mesh.axis_names)
        raise ValueError(
            f"ring attention needs a mesh with a {axis_name!r} axis (the current mesh has axes {names}): "
            f"pass mesh=..., or call inside `with jax.set_mesh(mesh):` / `model.sharding.use_mesh(mesh, rules)`"
        )
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"ring attention expects [batch, length, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}"
        )
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"ring attention is self-attention over one sharded sequence: queries ({q.shape[1]}) and keys "
            f"({k.shape[1]}) must have the same length; use another implementation for decoding with a cache"
        )
    if not isinstance(q_offset, int):
        raise ValueError(
            "ring attention takes an int q_offset (one position offset for the whole batch); per-sequence "
            "offsets come from cached decoding, which should use implementation='reference' or 'chunked'"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"ring attention: {k.shape[2]} key/value heads do not divide {q.shape[2]} query heads")
    n = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))[axis_name]
    if q.shape[1] % n:
        raise ValueError(
            f"ring attention: length {q.shape[1]} is not divisible by the {axis_name!r} mesh axis of size {n}; "
            f"pad the sequence to a multiple of {n} or change the mesh"
        )
    cfg = _RingCfg(
        axis_name=axis_name,
        causal=bool(causal),
        window=window,
        scale=float(default_scale(q.shape[-1]) if scale is None else scale),
        q_offset=q_offset,
    )
    g = k.shape[2]
    q5 = einops.rearrange(q, "b t (g r) d -> b t g r d", g=g)  # query head g*R + r reads key/value head g
    seq = P(None, axis_name)
    lengths = (
        None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32).reshape(-1),
        None if q_lengths is None else jnp.asarray(q_lengths, jnp.int32).reshape(-1),
    )
    out = jax.shard_map(
        partial(_ring, cfg),
        mesh=mesh,
        in_specs=(seq, seq, seq, P()),
        out_specs=seq,
        axis_names=frozenset({axis_name}),
    )(q5, k, v, lengths)
    return einops.rearrange(out, "b t g r d -> b t (g r) d")
