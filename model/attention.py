"""The attention mechanism as pure, jit-compatible functions.

Axis letters: B batch, Q query length, K key length, T length when Q == K, H query heads,
G key/value heads (G divides H; G == H is multi-head, G == 1 multi-query), Dh head width, D model width.
Masks are boolean with True meaning "this query may attend to this key", shaped to broadcast
against scores ``[B, H, Q, K]`` (they are built as ``[B or 1, 1, Q, K]``).

Positions: key ``j`` sits at absolute position ``j``; query ``i`` sits at ``q_offset + i``. A decode step
against a key cache of length K passes ``q_offset`` = the number of tokens already in the cache
(an int, or an int array ``[B]`` when the sequences of a batch are at different lengths).

The lecture's data path, one function per idea::

    q, k, v = project_qkv(x, query, key, value_down)       # [B,T,H,Dh], [B,T,G,Dh], [B,T,G,Dh]
    s = attention_scores(q, k)                             # q.k / sqrt(Dh)          [B,H,Q,K]
    p = masked_softmax(s, make_mask(...))                  # the attention pattern   [B,H,Q,K]
    o = weighted_values(p, v)                              # values weighted by it   [B,Q,H,Dh]
    y = sum_heads(o, value_up)                             # heads summed into D     [B,Q,D]

``attention(q, k, v, ..., implementation=...)`` is the one entry point that the model calls; the
implementations behind it agree with 'reference' (these functions) to the tolerances in tests/.
"""

from __future__ import annotations

import logging

import einops
import jax
import jax.numpy as jnp

from model import kernels
from model.host import cpu_devices_hint, host_cores
from model.kernels import REGISTRY, Implementation, register
from model.kernels.blocks import default_scale, visible

Array = jax.Array
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- scores
# default_scale(Dh) = 1 / sqrt(Dh), the scores' scale, lives in model/kernels/blocks.py beside the kernels
# that share it.


def repeat_kv(x: Array, n_heads: int) -> Array:
    """Repeat G key/value heads so that each of H query heads has its own copy.

    ``[B, K, G, Dh] -> [B, K, H, Dh]``; query head ``i`` reads key/value head ``i // (H // G)``
    (the grouping of jax.nn.dot_product_attention and of GQA, Ainslie et al. 2023).
    """
    g = x.shape[2]
    if n_heads % g:
        raise ValueError(f"{g} key/value heads do not divide {n_heads} query heads: use a divisor of {n_heads}")
    if g == n_heads:
        return x
    return einops.repeat(x, "b k g d -> b k (g r) d", r=n_heads // g)


def attention_scores(q: Array, k: Array, scale: float | None = None) -> Array:
    """Scores ``q . k * scale`` for every head, query and key, in float32.

    q: ``[B, Q, H, Dh]``; k: ``[B, K, G, Dh]`` with G dividing H. Returns ``[B, H, Q, K]`` float32.
    ``scale`` defaults to 1/sqrt(Dh).
    """
    scale = default_scale(q.shape[-1]) if scale is None else scale
    k = repeat_kv(k, q.shape[2])
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    return s * jnp.float32(scale)


# ---------------------------------------------------------------------------- masks
def query_positions(q_len: int, q_offset: int | Array = 0) -> Array:
    """Absolute positions of the queries: ``[1, Q]`` for an int offset, ``[B, Q]`` for an offset ``[B]``."""
    offset = jnp.asarray(q_offset, dtype=jnp.int32).reshape(-1, 1)  # [B or 1, 1]
    return offset + jnp.arange(q_len, dtype=jnp.int32)[None, :]


def causal_mask(q_len: int, k_len: int, q_offset: int | Array = 0) -> Array:
    """No later token speaks to an earlier one: key position <= query position.

    Returns ``[B or 1, 1, Q, K]`` bool. With ``q_offset`` the queries are positions
    ``q_offset .. q_offset + Q - 1`` of a longer sequence whose keys fill ``0 .. K - 1``.
    """
    return _position_mask(q_len, k_len, q_offset, causal=True)


def padding_mask(
    kv_lengths: Array | None,
    k_len: int,
    q_lengths: Array | None = None,
    q_len: int | None = None,
) -> Array:
    """Keys (and optionally queries) beyond each sequence's length are padding.

    kv_lengths: ``[B]`` number of real keys per sequence; q_lengths: ``[B]`` number of real queries
    (needs ``q_len``). Returns ``[B, 1, Q or 1, K]`` bool. A padded query's row is wholly masked, so
    its output is zero.
    """
    if kv_lengths is None and q_lengths is None:
        raise ValueError("padding_mask needs kv_lengths or q_lengths")
    keep = None
    if kv_lengths is not None:
        kv_lengths = jnp.asarray(kv_lengths, jnp.int32).reshape(-1)
        keep = (jnp.arange(k_len)[None, :] < kv_lengths[:, None])[:, None, None, :]  # [B,1,1,K]
    if q_lengths is not None:
        if q_len is None:
            raise ValueError("padding_mask: q_lengths needs q_len")
        q_lengths = jnp.asarray(q_lengths, jnp.int32).reshape(-1)
        q_keep = (jnp.arange(q_len)[None, :] < q_lengths[:, None])[:, None, :, None]  # [B,1,Q,1]
        keep = q_keep if keep is None else keep & q_keep
    return keep


def sliding_window_mask(q_len: int, k_len: int, window: int, q_offset: int | Array = 0, causal: bool = True) -> Array:
    """Each query sees only keys less than ``window`` positions away (itself included).

    Causal: keys ``q_pos - window < k_pos <= q_pos`` (Mistral's local attention). Not causal:
    ``|q_pos - k_pos| < window``. Returns ``[B or 1, 1, Q, K]`` bool.
    """
    if window <= 0:
        raise ValueError(f"sliding window {window} must be positive")
    return _position_mask(q_len, k_len, q_offset, causal=causal, window=window)


def _position_mask(q_len: int, k_len: int, q_offset: int | Array, **rule) -> Array:
    """The mask rule the kernels apply per block (model/kernels/blocks.py ``visible``) on the whole grid."""
    qp = query_positions(q_len, q_offset)[:, :, None]  # [B|1, Q, 1]
    kp = jnp.arange(k_len, dtype=jnp.int32)[None, None, :]  # [1, 1, K]
    return visible(qp, kp, **rule)[:, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the masks that are not None (None when all are)."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


def make_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool = False,
    q_offset: int | Array = 0,
    kv_lengths: Array | None = None,
    q_lengths: Array | None = None,
    window: int | None = None,
) -> Array | None:
    """The combination of causal, padding and sliding-window masks; ``[B or 1, 1, Q, K]`` or None."""
    masks = []
    if window is not None:
        masks.append(sliding_window_mask(q_len, k_len, window, q_offset, causal=causal))
    elif causal:
        masks.append(causal_mask(q_len, k_len, q_offset))
    if kv_lengths is not None or q_lengths is not None:
        masks.append(padding_mask(kv_lengths, k_len, q_lengths, q_len))
    return combine_masks(*masks)


# ---------------------------------------------------------------------------- softmax and values
def masked_softmax(scores: Array, mask: Array | None = None) -> Array:
    """Softmax over the last axis in float32, whatever the input dtype: the attention pattern.

    scores: ``[..., K]``; mask broadcastable to it (True keeps). Masked entries are exactly 0; a row
    whose every entry is masked is all zeros (never NaN). Rows with at least one kept entry sum to 1.
    """
    s = scores.astype(jnp.float32)
    if mask is None:
        return jax.nn.softmax(s, axis=-1)
    mask = jnp.broadcast_to(mask, s.shape)
    s = jnp.where(mask, s, -jnp.inf)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked row: avoid -inf - -inf
    e = jnp.where(mask, jnp.exp(s - jax.lax.stop_gradient(row_max)), 0.0)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(denom == 0.0, 1.0, denom)


def weighted_values(pattern: Array, v: Array) -> Array:
    """Each query's output: the values weighted by its row of the attention pattern.

    pattern: ``[B, H, Q, K]``; v: ``[B, K, G, Dv]`` (G divides H). Returns ``[B, Q, H, Dv]`` in v's dtype,
    accumulated in float32.
    """
    v = repeat_kv(v, pattern.shape[1])
    o = jnp.einsum("bhqk,bkhd->bqhd", pattern.astype(jnp.float32), v, preferred_element_type=jnp.float32)
    return o.astype(v.dtype)


def split_heads(x: Array, n_heads: int) -> Array:
    """``[B, T, H*Dh] -> [B, T, H, Dh]``."""
    return einops.rearrange(x, "b t (h d) -> b t h d", h=n_heads)


def merge_heads(x: Array) -> Array:
    """``[B, T, H, Dh] -> [B, T, H*Dh]`` (concatenate the heads' outputs)."""
    return einops.rearrange(x, "b t h d -> b t (h d)")


# ---------------------------------------------------------------------------- projections
def project_qkv(x: Array, query: Array, key: Array, value_down: Array, x_kv: Array | None = None):
    """Per-head query, key and value-down maps as einsums over a head axis.

    x: ``[B, T, D]``; query ``[D, H, Dh]``; key ``[D, G, Dh]``; value_down ``[D, G, Dv]`` (for the full-rank
    value map of the lecture's first explanation, ``value_down`` is ``[D, G, D]``). ``x_kv`` (default x)
    is the sequence that keys and values are read from. Returns q ``[B,T,H,Dh]``, k ``[B,S,G,Dh]``,
    v ``[B,S,G,Dv]``.
    """
    x_kv = x if x_kv is None else x_kv
    return _per_head(x, query), _per_head(x_kv, key), _per_head(x_kv, value_down)


def matmul_rows(x: Array, w: Array) -> Array:
    """``x [..., D] @ w [D, F] -> [..., F]``, computed on ``x`` flattened to rows ``[N, D]``.

    Same numbers as the batched matmul; XLA's CPU backend runs the backward of a 2-D matmul about twice
    as fast as that of a 3-D one (its weight gradient then contracts one axis, not B and T at once).
    Every projection of the model goes through here.
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def _per_head(x: Array, w: Array) -> Array:
    """``einsum('btd,dhe->bthe', x, w)`` as one 2-D matmul ``[B*T, D] @ [D, H*E]`` (see matmul_rows)."""
    d, h, e = w.shape
    return matmul_rows(x, w.reshape(d, h * e)).reshape(*x.shape[:-1], h, e)


def sum_heads(o: Array, value_up: Array | None = None) -> Array:
    """Map each head's output back to the model width and sum over heads: the value-up map.

    o: ``[B, Q, H, Dh]``; value_up ``[H, Dh, D]`` (the usual output projection W_O, cut by head).
    ``sum_h o[:, :, h] @ value_up[h]`` is the contraction over h, equal to ``merge_heads(o) @ W_O``.
    With ``value_up=None`` (the full-rank value map) the heads' outputs are already D wide and are summed.
    Returns ``[B, Q, D]``.
    """
    if value_up is None:
        return jnp.sum(o, axis=2)
    b, q, h, e = o.shape
    # the contraction over (h, e) as one 2-D matmul [B*Q, H*Dh] @ [H*Dh, D]
    return matmul_rows(o.reshape(b, q, h * e), value_up.reshape(h * e, -1))


# ---------------------------------------------------------------------------- implementations
def available_implementations() -> list[str]:
    return sorted(REGISTRY)


def attend_reference(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> tuple[Array, Array]:
    """The lecture's attention, step by step. Returns (output ``[B,Q,H,Dv]``, pattern ``[B,H,Q,K]``).

    With ``dropout_rate`` and a ``dropout_rng`` key, entries of the pattern are dropped (and the kept ones
    scaled by 1 / (1 - rate)) before they weight the values; the pattern returned is the one before dropout.
    """
    pattern = masked_softmax(attention_scores(q, k, scale), mask)
    kept = pattern
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, pattern.shape)
        kept = jnp.where(keep, pattern / (1.0 - dropout_rate), 0.0)
    return weighted_values(kept, v).astype(q.dtype), pattern


def _reference(q, k, v, *, mask, scale, return_pattern=False, dropout_rate=0.0, dropout_rng=None, **_):
    """'reference': :func:`attend_reference`, the pattern returned only when asked for."""
    out, pattern = attend_reference(q, k, v, mask, scale, dropout_rate, dropout_rng)
    return (out, pattern) if return_pattern else out


register(Implementation("reference", _reference, returns_pattern=True, dropout=True, one_head_width=False))

_logged_choices: set[tuple] = set()


def select_implementation(
    q_shape: tuple[int, ...], dtype, backend: str | None = None, *, need_pattern: bool = False, **mask_info
) -> str:
    """The implementation that 'auto' resolves to on this backend for these shapes.

    ``mask_info`` (k_len, causal, window, per_batch_offset, q_offset_zero, has_padding) goes to
    ``model.kernels.auto_choice``. The choice is logged once per (backend, choice). Overridden by
    passing an explicit implementation.
    """
    backend = backend or jax.default_backend()
    choice = "reference" if need_pattern else kernels.auto_choice(q_shape, jnp.dtype(dtype), backend, **mask_info)
    if (backend, choice) not in _logged_choices:
        _logged_choices.add((backend, choice))
        log.info("attention implementation 'auto' -> %r on backend %r", choice, backend)
        hint = cpu_devices_hint(backend, choice, jax.local_device_count(), host_cores())
        if hint:
            log.info(hint)
    return choice


def attention(
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
    implementation: str = "reference",
    return_pattern: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
):
    """Scaled dot-product attention: the one entry point. Validate, resolve the implementation, dispatch.

    q ``[B, Q, H, Dh]``, k ``[B, K, G, Dh]``, v ``[B, K, G, Dv]`` with G dividing H (GQA/MQA).
    Masks (combined with AND): ``causal`` with ``q_offset`` (int or ``[B]``), padding by ``kv_lengths`` /
    ``q_lengths`` (``[B]``), sliding ``window``. ``scale`` defaults to 1/sqrt(Dh).

    implementation: 'reference' (the functions above; the only one that can return the pattern or
    drop out entries of it), 'xla' (jax.nn.dot_product_attention), 'chunked' (online softmax over key
    blocks, O(T) memory), 'auto' (the fastest correct path on this backend), and the others in
    ``model.kernels.registry.REGISTRY``. Returns ``[B, Q, H, Dv]`` in q's dtype, and the pattern
    ``[B, H, Q, K]`` float32 as a second value when ``return_pattern``.
    """
    _check_shapes(q, k, v)
    masks = dict(causal=causal, q_offset=q_offset, kv_lengths=kv_lengths, q_lengths=q_lengths, window=window)
    use_dropout = dropout_rate > 0.0 and dropout_rng is not None
    impl = _resolve(implementation, q, k, return_pattern, use_dropout, masks)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    if impl.dense_mask:  # an implementation that builds its masks per block gets no [Q, K] mask
        masks["mask"] = make_mask(q.shape[1], k.shape[1], **masks)
    if impl.returns_pattern or impl.dropout:
        extra = dict(return_pattern=return_pattern, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
        return impl.fn(q, k, v, scale=scale, **masks, **extra)
    if impl.one_head_width:
        return _one_head_width(impl.fn, q, k, v, scale=scale, **masks)
    return impl.fn(q, k, v, scale=scale, **masks).astype(q.dtype)


def _resolve(name: str, q: Array, k: Array, return_pattern: bool, use_dropout: bool, masks: dict) -> Implementation:
    """The registered implementation ``name`` ('auto' chosen here) names; ValueError when it cannot serve."""
    if name == "auto":
        name = select_implementation(
            q.shape,
            q.dtype,
            need_pattern=return_pattern or use_dropout,
            k_len=k.shape[1],
            causal=masks["causal"],
            window=masks["window"],
            per_batch_offset=jnp.ndim(masks["q_offset"]) > 0,
            q_offset_zero=isinstance(masks["q_offset"], int) and masks["q_offset"] == 0,
            has_padding=masks["kv_lengths"] is not None or masks["q_lengths"] is not None,
        )
    impl = REGISTRY.get(name)
    if (return_pattern and not (impl and impl.returns_pattern)) or (use_dropout and not (impl and impl.dropout)):
        raise ValueError(
            f"implementation={name!r} cannot return or drop out the attention pattern; use implementation='reference'"
        )
    if impl is None:
        raise ValueError(f"unknown attention implementation {name!r}; choose one of {available_implementations()}")
    return impl


def _one_head_width(fn, q: Array, k: Array, v: Array, **kwargs) -> Array:
    """``fn`` on q, k, v of one head width: the full-rank value map has Dv = D != Dh, so the narrower side
    is padded with zeros (zeros change no dot product) and the output cut back to Dv."""
    dv, dh = v.shape[-1], q.shape[-1]
    if dv > dh:
        q, k = (jnp.pad(x, [(0, 0)] * 3 + [(0, dv - dh)]) for x in (q, k))
    elif dv < dh:
        v = jnp.pad(v, [(0, 0)] * 3 + [(0, dh - dv)])
    return fn(q, k, v, **kwargs)[..., :dv].astype(q.dtype)


def _check_shapes(q: Array, k: Array, v: Array) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects q, k, v as [batch, length, heads, head_dim]; got shapes {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"attention: {k.shape[2]} key/value heads do not divide {q.shape[2]} query heads")


# ---------------------------------------------------------------------------- multi-head attention
def multi_head_attention(
    x: Array,
    query: Array,
    key: Array,
    value_down: Array,
    value_up: Array | None,
    *,
    return_pattern: bool = False,
    **attention_kwargs,
):
    """Multi-head self-attention as one pure function: project, attend, and sum heads into the width.

    x ``[B, T, D]``; query ``[D, H, Dh]``; key ``[D, G, Dh]``; value_down ``[D, G, Dh]`` and value_up
    ``[H, Dh, D]`` (the factored value map), or value_down ``[D, G, D]`` and value_up None (one
    full-rank D x D value map per head). ``attention_kwargs`` go to :func:`attention`. Returns
    ``[B, T, D]`` (and the pattern ``[B, H, T, T]`` when ``return_pattern``). What is added to the
    residual stream is this output.
    """
    q, k, v = project_qkv(x, query, key, value_down)
    res = attention(q, k, v, return_pattern=return_pattern, **attention_kwargs)
    o, pattern = res if return_pattern else (res, None)
    y = sum_heads(o, value_up)
    return (y, pattern) if return_pattern else y
