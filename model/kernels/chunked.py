"""Chunked attention: online softmax over key/value blocks, O(T) memory, masked blocks skipped.

The flash-attention recurrence (Milakov & Gimelshein 2018; Dao et al. 2022, FlashAttention-2 2023) in
pure JAX, behind ``attention(..., implementation='chunked')``::

    for each query block i:                      (lax.scan over query blocks)
        m, l, acc = -inf, 0, 0                   running row max, row sum, unnormalised output
        for each key block j that block i sees:  (lax.fori_loop, bounds computed per i)
            s = (q_i * scale) k_j^T              [B*G, R*bq, bk]  only this block of scores exists
            m, l, acc = online_softmax_update(m, l, acc, s, v_j)     (model/kernels/blocks.py)
        out_i, lse_i = acc / l, m + log l

The backward pass (a ``jax.custom_vjp``) stores only the output and the log-sum-exp per row and
recomputes each block's pattern ``p = exp(s - lse)``: ``dv += p^T do``, ``ds = p * (do v^T - delta)``,
``dk += ds^T q``, ``dq += ds k`` with ``delta = rowsum(do * out)`` (FlashAttention-2's backward), looping
over key blocks outside and the query blocks that see them inside. No ``[Q, K]`` array is ever built;
extra memory is O(T * block).

Axis letters as in model/attention.py; R = H // G query heads per key/value head. Grouped-query
attention never repeats k/v: the R query heads that share a key/value head are stacked into the rows
of one matmul (``[R*bq, Dh] x [Dh, bk]``).

Masks are never materialised in full. For each query block the key blocks split into three ranges
computed from causal, window, q_offset and kv_lengths (:meth:`_Static.k_block_ranges`, from
:class:`~model.kernels.blocks.MaskInfo`): wholly masked blocks are never visited (dynamic loop
bounds, so their FLOPs are really skipped: causal attention does about half the work of full
attention), wholly visible blocks run a loop body with no mask arithmetic, and only the partly
masked ones (the causal diagonal, window edges, padding) build their mask from positions (iota) in
a second loop. :func:`block_schedule` exposes the ranges.
Padded queries (``q_lengths``) are zeroed outside the kernel, so their gradient is zero too.

Why it looks the way it does on CPU (measured, experiments/bench/attention.py): 128 x 128 blocks keep
a step's score block in cache (256 and 512 were slower); the blocks are ``[B*G, rows, Dh]`` so that every
matmul is a plain batched matmul over one batch axis with canonical layouts; the scale is folded into
q once (exact in float32 up to one rounding of q; for other dtypes only when it is a power of two, else
it multiplies the float32 scores), which saves a pass over every score block; the backward computes
each block transposed (keys x queries) so that dv = p^T do and dk = ds^T q contract the lhs's last axis,
and gets dq^T = k^T ds^T from k stored transposed, so that all five matmuls of a block are plain
(N, N) or (N, T) products, which XLA:CPU hands to its fast matmul library (a matmul contracting the
lhs's second-to-last axis is not, and is slower); the scale is applied to dq (and dk) once at
the end.

Per-device code: the kernel runs unchanged under ``jax.pmap``, ``vmap`` and inside ``jax.shard_map``
(its constant loop carries take the inputs' varying manual axes, and the cotangent of an input that is
replicated over an axis the others are split on, e.g. one key/value head shared by query heads split
over devices, is summed over that axis); tests/test_transforms.py checks each.

The mask rule, the online-softmax update, finalize and the block backward are the shared ones of
model/kernels/blocks.py (ring attention uses the same); this module is the blocked loop around them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from model.kernels.blocks import MaskInfo, default_scale, finalize, online_softmax_update, pattern_and_score_grads

Array = jax.Array

# Default block sizes: on the 2-core AVX-512 CPU 128 x 128 beat 64, 256 and 512 and mixed shapes
# (README, "Attention implementations"). A [B, G, R*128, 128] float32 score block (2 MiB at B*H=32)
# stays in cache between the fused ops of a step, and the causal diagonal wastes little; larger
# blocks make each matmul bigger but spill.
BLOCK_Q = 128
BLOCK_K = 128


# ---------------------------------------------------------------------------- block layout
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _plan(length: int, block: int) -> tuple[int, int]:
    """(block size, number of blocks): blocks of at most ``block`` that waste the least padding."""
    n = _cdiv(length, block)
    return _cdiv(length, n), n


def _q_blocks(x: Array, n: int, bq: int, g: int) -> Array:
    """``[B, Q, H, Dh] -> [n, B*G, R*bq, Dh]`` (rows: head-in-group major, position minor)."""
    b, q, h, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, n * bq - q), (0, 0), (0, 0)))
    x = x.reshape(b, n, bq, g, h // g, d).transpose(1, 0, 3, 4, 2, 5)
    return x.reshape(n, b * g, (h // g) * bq, d)


def _q_unblock(x: Array, q_len: int, h: int, b: int) -> Array:
    """Inverse of :func:`_q_blocks`: ``[n, B*G, R*bq, Dh] -> [B, Q, H, Dh]``."""
    n, bg, rows, d = x.shape
    g = bg // b
    bq = rows // (h // g)
    x = x.reshape(n, b, g, h // g, bq, d).transpose(1, 0, 4, 2, 3, 5).reshape(b, n * bq, h, d)
    return x[:, :q_len]


def _kv_blocks(x: Array, n: int, bk: int) -> Array:
    """``[B, K, G, Dh] -> [n, B*G, bk, Dh]``."""
    b, k, g, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, n * bk - k), (0, 0), (0, 0)))
    return x.reshape(b, n, bk, g, d).transpose(1, 0, 3, 2, 4).reshape(n, b * g, bk, d)


def _kv_unblock(x: Array, k_len: int, b: int) -> Array:
    n, bg, bk, d = x.shape
    g = bg // b
    return x.reshape(n, b, g, bk, d).transpose(1, 0, 3, 2, 4).reshape(b, n * bk, g, d)[:, :k_len]


@dataclass(frozen=True)
class _Static:
    """Everything about one call that is known at trace time (hashable: a custom_vjp nondiff arg)."""

    causal: bool
    window: int | None
    has_kv_lengths: bool
    q_len: int
    k_len: int
    heads: int
    bq: int
    nq: int
    bk: int
    nk: int
    scale: float
    fold: bool  # the scale is folded into q (exact in float32, or a power of two) rather than into the scores
    batch: int  # B
    groups: int  # G, key/value heads
    rows: int  # R * bq: rows of a query block (the R query heads of a group stacked)

    def info(self, q_offset: Array, kv_lengths: Array | None) -> MaskInfo:
        return MaskInfo(self.causal, self.window, self.k_len, q_offset, kv_lengths)

    def q_range(self, info: MaskInfo, i: Array) -> tuple[Array, Array]:
        """Smallest and largest absolute position among the real queries of block i (any batch row)."""
        start = i * self.bq
        last = jnp.minimum(start + self.bq, self.q_len) - 1
        return jnp.min(info.q_offset) + start, jnp.max(info.q_offset) + last

    def k_block_ranges(self, info: MaskInfo, i: Array) -> tuple[Array, Array, Array, Array]:
        """Key blocks that query block i visits: ``[j_lo, j_hi)``, of which ``[f_lo, f_hi)`` need no mask.

        Blocks before j_lo and from j_hi on are wholly masked and skipped; ``j_lo <= f_lo <= f_hi <= j_hi``.
        """
        q_min, q_max = self.q_range(info, i)
        lo, hi = info.key_range(q_min, q_max)
        j_lo = lo // self.bk
        j_hi = jnp.maximum((hi + self.bk - 1) // self.bk, j_lo)
        f_lo, f_hi = info.full_range(q_min, q_max, self.bk)
        f_lo = jnp.clip(f_lo, j_lo, j_hi)
        f_hi = jnp.clip(f_hi, f_lo, j_hi)
        return j_lo, f_lo, f_hi, j_hi

    def positions(self, info: MaskInfo, i: Array, j: Array) -> tuple[Array, Array]:
        """Absolute positions of block (i, j): queries ``[B|1, R*bq]`` (rows as in _q_blocks), keys ``[bk]``."""
        rows = jnp.arange(self.rows, dtype=jnp.int32) % self.bq + i * self.bq
        q_pos = info.q_offset[:, None] + rows[None, :]
        k_pos = j * self.bk + jnp.arange(self.bk, dtype=jnp.int32)
        return q_pos, k_pos


def _make_static(
    q_shape, k_shape, causal, window, has_kv_lengths, scale, block_q, block_k, dtype=jnp.float32
) -> _Static:
    batch, q_len, heads, _ = q_shape
    mantissa = abs(float(scale)) and abs(float(scale)) / 2.0 ** round(math.log2(abs(float(scale))))
    fold = jnp.dtype(dtype) == jnp.float32 or mantissa == 1.0
    k_len, groups = k_shape[1], k_shape[2]
    bq, nq = _plan(q_len, block_q)
    bk, nk = _plan(k_len, block_k)
    rows = (heads // groups) * bq
    # positional, in the order of the fields (each variable is named after its field)
    return _Static(
        causal, window, has_kv_lengths, q_len, k_len, heads, bq, nq, bk, nk, scale, fold, batch, groups, rows
    )


def _varying_axes(x) -> set[str]:
    """The ``jax.shard_map`` axes x varies over (empty outside shard_map: plain jit, vmap, pmap)."""
    if x is None:
        return set()
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    return set(getattr(manual, "varying", None) or getattr(aval, "vma", None) or ())


def _vary(x, *refs):
    """``x`` marked as varying over every shard_map axis that some ref varies over.

    Loop carries that start as constants (zeros, -inf) must have the type of what the loop body
    returns, which inside shard_map includes the manual axes the inputs vary over.
    """
    axes = set().union(*(_varying_axes(r) for r in refs))
    return jax.lax.pcast(x, tuple(sorted(axes)), to="varying") if axes else x


def _sum_to(grad, primal):
    """A cotangent summed over the shard_map axes it varies over but its primal does not.

    E.g. keys replicated over a 'heads' axis while the query heads are split over it: every device
    holds a part of dk, and the gradient of the one replicated k is their sum (the transpose of
    broadcasting k to every device).
    """
    extra = _varying_axes(grad) - _varying_axes(primal)
    return jax.lax.psum(grad, tuple(sorted(extra))) if extra else grad


# ---------------------------------------------------------------------------- forward
def _three_loops(lo, f_lo, f_hi, hi, step, carry):
    """Run ``step(idx, carry, masked)`` over ``[lo, f_lo)`` and ``[f_hi, hi)`` masked, ``[f_lo, f_hi)`` not.

    Dynamic bounds (while loops) skip wholly masked blocks without spending FLOPs on them, and the
    mask arithmetic runs only on the few partly masked blocks (the causal diagonal, window edges).
    Both masked ranges share one loop (one compiled body fewer: compile time matters here).
    """
    n_head = f_lo - lo

    def masked(n, c):
        return step(jnp.where(n < n_head, lo + n, f_hi + n - n_head), c, masked=True)

    carry = jax.lax.fori_loop(f_lo, f_hi, functools.partial(step, masked=False), carry)
    return jax.lax.fori_loop(0, n_head + hi - f_hi, masked, carry)


def _flat_mask(info: MaskInfo, st: _Static, i: Array, j: Array) -> Array:
    """The mask of block (i, j) for the kernel's flattened batch axis: ``[B*G or 1, R*bq, bk]``."""
    m = info.block(*st.positions(info, i, j))  # [B|1, 1, Rq, bk]
    if m.shape[0] == 1:
        return m[0]
    return jnp.broadcast_to(m, (m.shape[0], st.groups) + m.shape[2:]).reshape((-1,) + m.shape[2:])


def _forward_blocks(st: _Static, qb, kb, vb, q_offset, kv_lengths):
    """Blocked forward: qb ``[nq,B*G,R*bq,Dh]`` (pre-scaled when ``st.fold``), kb/vb ``[nk,B*G,bk,Dh]``.

    Returns (out float32, lse) per query block. Every block is a plain batched matmul over one batch
    axis (B*G) with canonical layouts.
    """
    info = st.info(q_offset, kv_lengths)
    _, bg, rows, _ = qb.shape
    dv = vb.shape[-1]

    def q_block(_, xs):
        i, q_i = xs

        def step(j, carry, masked):
            m, l, acc = carry
            s = jnp.einsum("bqd,bkd->bqk", q_i, kb[j], preferred_element_type=jnp.float32)
            if not st.fold:
                s = s * jnp.float32(st.scale)
            if masked:
                s = jnp.where(_flat_mask(info, st, i, j), s, -jnp.inf)

            def pv(p):
                return jnp.einsum("bqk,bkd->bqd", p.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32)

            return online_softmax_update(m, l, acc, s, pv)

        init = (
            jnp.full((bg, rows), -jnp.inf, jnp.float32),
            jnp.zeros((bg, rows), jnp.float32),
            jnp.zeros((bg, rows, dv), jnp.float32),
        )
        init = tuple(_vary(x, q_i, kb, vb, q_offset, kv_lengths) for x in init)
        return None, finalize(*_three_loops(*st.k_block_ranges(info, i), step, init))

    _, (out, lse) = jax.lax.scan(q_block, None, (jnp.arange(st.nq, dtype=jnp.int32), qb))
    return out, lse


# ---------------------------------------------------------------------------- backward
def _backward_blocks(st: _Static, qb, kb, vb, ob, lse, dob, q_offset, kv_lengths):
    """Blocked FlashAttention-2 backward; returns dq ``[nq,...]``, dk, dv ``[nk,...]`` float32, unscaled.

    Key blocks outside (dk, dv of block j accumulate in registers of the loop), the query blocks that
    see block j inside (dq^T accumulates in place in a ``[nq, B*G, Dh, R*bq]`` buffer). Each block is
    computed transposed, keys by queries (``[bk, R*bq]``): then dv = p^T do and dk = ds^T q are plain
    (N, N) matmuls, and so is dq^T = k^T ds^T with k transposed once up front. The scores' scale is
    left out of dq (and of dk unless it was folded into q): the caller applies it once to the totals.
    """
    info = st.info(q_offset, kv_lengths)
    delta = jnp.sum(dob.astype(jnp.float32) * ob, axis=-1)  # [nq, B*G, R*bq]
    # The query blocks that see key block j: every range bound is nondecreasing in i, so the set of i
    # with lo_i <= j < hi_i is an interval whose ends are counts.
    ranges = jax.vmap(lambda i: jnp.stack(st.k_block_ranges(info, i)))(jnp.arange(st.nq, dtype=jnp.int32))
    j_lo, f_lo, f_hi, j_hi = (ranges[:, n] for n in range(4))

    def count(x, j):
        return jnp.sum(x <= j).astype(jnp.int32)

    def k_block(dq, xs):
        j, k_j, v_j, kt_j = xs

        def step(i, carry, masked):
            dq, dk, dv = carry
            q_i, do_i = qb[i], dob[i]
            st_ = jnp.einsum("bkd,bqd->bkq", k_j, q_i, preferred_element_type=jnp.float32)
            if not st.fold:
                st_ = st_ * jnp.float32(st.scale)
            if masked:
                st_ = jnp.where(jnp.swapaxes(_flat_mask(info, st, i, j), -1, -2), st_, -jnp.inf)
            dpt = jnp.einsum("bkd,bqd->bkq", v_j, do_i, preferred_element_type=jnp.float32)
            # the block's attention pattern recomputed, and the scores' gradient, both transposed
            pt, dst = pattern_and_score_grads(st_, lse[i][:, None, :], dpt, delta[i][:, None, :])
            dv_ij = jnp.einsum("bkq,bqd->bkd", pt.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32)
            dst = dst.astype(q_i.dtype)
            dk_ij = jnp.einsum("bkq,bqd->bkd", dst, q_i, preferred_element_type=jnp.float32)
            # dq_i^T = k_j^T ds^T: a plain (N, N) matmul on k stored transposed (dq is kept transposed)
            dqt_i = jnp.einsum("bdk,bkq->bdq", kt_j, dst, preferred_element_type=jnp.float32)
            dq = jax.lax.dynamic_update_index_in_dim(dq, dq[i] + dqt_i, i, axis=0)
            return dq, dk + dk_ij, dv + dv_ij

        i_lo, i_hi = count(j_hi, j), count(j_lo, j)
        i_hi = jnp.maximum(i_hi, i_lo)
        fi_lo = jnp.clip(count(f_hi, j), i_lo, i_hi)
        fi_hi = jnp.clip(count(f_lo, j), fi_lo, i_hi)
        zeros = (jnp.zeros(k_j.shape, jnp.float32), jnp.zeros(v_j.shape, jnp.float32))
        init = (dq, *(_vary(z, qb, k_j, v_j, dob, lse, q_offset, kv_lengths) for z in zeros))
        dq, dk, dv = _three_loops(i_lo, fi_lo, fi_hi, i_hi, step, init)
        return dq, (dk, dv)

    n, bg, rows, d = qb.shape
    dqt0 = _vary(jnp.zeros((n, bg, d, rows), jnp.float32), qb, kb, vb, dob, lse, q_offset, kv_lengths)
    kt = jnp.swapaxes(kb, -1, -2)  # [nk, B*G, Dh, bk]
    dqt, (dk, dv) = jax.lax.scan(k_block, dqt0, (jnp.arange(st.nk, dtype=jnp.int32), kb, vb, kt))
    return jnp.swapaxes(dqt, -1, -2), dk, dv


# ---------------------------------------------------------------------------- custom_vjp glue
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(st: _Static, q, k, v, q_offset, kv_lengths):
    return _chunked_fwd(st, q, k, v, q_offset, kv_lengths)[0]


def _chunked_fwd(st: _Static, q, k, v, q_offset, kv_lengths):
    if st.fold:  # s = (q * scale) k^T: one multiply of q instead of one per score block
        q = (q.astype(jnp.float32) * jnp.float32(st.scale)).astype(q.dtype)
    qb = _q_blocks(q, st.nq, st.bq, st.groups)
    kb, vb = _kv_blocks(k, st.nk, st.bk), _kv_blocks(v, st.nk, st.bk)
    ob, lse = _forward_blocks(st, qb, kb, vb, q_offset, kv_lengths)
    out = _q_unblock(ob, st.q_len, st.heads, st.batch).astype(q.dtype)
    return out, (qb, kb, vb, ob.astype(q.dtype), lse, q_offset, kv_lengths)


def _chunked_bwd(st: _Static, res, g):
    qb, kb, vb, ob, lse, q_offset, kv_lengths = res
    dob = _q_blocks(g.astype(qb.dtype), st.nq, st.bq, st.groups)
    dq, dk, dv = _backward_blocks(st, qb, kb, vb, ob.astype(jnp.float32), lse, dob, q_offset, kv_lengths)
    scale = jnp.float32(st.scale)
    dq = _q_unblock(dq * scale, st.q_len, st.heads, st.batch).astype(qb.dtype)
    dk = _kv_unblock(dk if st.fold else dk * scale, st.k_len, st.batch).astype(kb.dtype)
    dv = _kv_unblock(dv, st.k_len, st.batch).astype(vb.dtype)
    return _sum_to(dq, qb), _sum_to(dk, kb), _sum_to(dv, vb), None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# ---------------------------------------------------------------------------- public entry
def chunked_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = False,
    q_offset: int | Array = 0,
    kv_lengths: Array | None = None,
    q_lengths: Array | None = None,
    window: int | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> Array:
    """Attention by blocks with an online softmax; same meaning as model.attention.attention.

    q ``[B, Q, H, Dh]``, k/v ``[B, K, G, Dh]`` (G divides H; k/v are never repeated). Masks: ``causal``
    with ``q_offset`` (int or ``[B]``), ``kv_lengths`` / ``q_lengths`` ``[B]``, sliding ``window``.
    ``block_q`` / ``block_k`` (default :data:`BLOCK_Q` / :data:`BLOCK_K`) bound the block sizes; the
    lengths need not be multiples of them. Scores, softmax and accumulators are float32 whatever the
    input dtype. Returns ``[B, Q, H, Dh]`` in q's dtype; a wholly masked row is 0.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[-1] != k.shape[-1] or q.shape[2] % k.shape[2]:
        raise ValueError(
            f"chunked_attention: q [B,Q,H,Dh] and k, v [B,K,G,Dh] with G dividing H; got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[1] == 0 or q.shape[1] == 0:
        raise ValueError("chunked_attention: empty query or key sequence")
    block_q = BLOCK_Q if block_q is None else block_q
    block_k = BLOCK_K if block_k is None else block_k
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"chunked_attention: block sizes must be positive, got {block_q}, {block_k}")
    if window is not None and window <= 0:
        raise ValueError(f"sliding window {window} must be positive")
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    st = _make_static(q.shape, k.shape, bool(causal), window, kv_lengths is not None, scale, block_q, block_k, q.dtype)
    q_offset = jnp.asarray(q_offset, jnp.int32).reshape(-1)
    if kv_lengths is not None:
        kv_lengths = jnp.asarray(kv_lengths, jnp.int32).reshape(-1)
    out = _chunked(st, q, k, v, q_offset, kv_lengths)
    if q_lengths is not None:
        # Padded queries: zero the rows outside the kernel, so their gradient is zero too.
        keep = jnp.arange(q.shape[1])[None, :] < jnp.asarray(q_lengths, jnp.int32).reshape(-1, 1)
        out = jnp.where(keep[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out


def block_schedule(q_len: int, k_len: int, *, block_q: int | None = None, block_k: int | None = None, **mask) -> Array:
    """The key blocks each query block visits, as the kernel's loops do: int32 ``[nq, 4]``.

    Row i is ``(j_lo, f_lo, f_hi, j_hi)``: blocks ``[j_lo, j_hi)`` are computed, ``[f_lo, f_hi)`` of them
    without a mask; all others are skipped. ``sum(j_hi - j_lo)`` is the number of block pairs computed
    (e.g. about half of them for causal attention), which is how the tests check the skipping.
    ``mask``: ``causal``, ``q_offset``, ``kv_lengths``, ``window`` as in :func:`chunked_attention`.
    """
    if set(mask) - {"causal", "q_offset", "kv_lengths", "window"}:
        raise TypeError(
            f"block_schedule: unknown mask arguments {sorted(set(mask) - {'causal', 'q_offset', 'kv_lengths', 'window'})}"
        )
    causal, window = bool(mask.get("causal", False)), mask.get("window")
    q_offset, kv_lengths = mask.get("q_offset", 0), mask.get("kv_lengths")
    st = _make_static(
        (1, q_len, 1, 1),
        (1, k_len, 1, 1),
        causal,
        window,
        kv_lengths is not None,
        1.0,
        block_q or BLOCK_Q,
        block_k or BLOCK_K,
    )
    off = jnp.asarray(q_offset, jnp.int32).reshape(-1)
    kvl = None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32).reshape(-1)
    info = st.info(off, kvl)
    return jax.vmap(lambda i: jnp.stack(st.k_block_ranges(info, i)))(jnp.arange(st.nq, dtype=jnp.int32))


__all__ = ["BLOCK_K", "BLOCK_Q", "block_schedule", "chunked_attention"]
