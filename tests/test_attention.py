"""The pure functions of model/attention.py and model/positions.py against an independent NumPy reference.

The reference (the ``np_*`` functions below) is written from the definitions with loops and float64
NumPy, sharing no code with the model. Both sides see the same inputs: for bfloat16 the inputs are
rounded to bfloat16 first and the reference receives those rounded values in float64, so the
tolerances below measure only the computation's own rounding.

Other test files (test_attention_impls.py, test_transforms.py) import the reference and ``TOL`` from here.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import attention as attn
from model.positions import apply_rotary, sinusoidal_table

# ---------------------------------------------------------------------------- tolerances, in one place
# Keyed by the dtype the compared result is stored in. Inputs are O(1) and sums run over <= 64 terms.
TOL = {
    # conftest sets matmul precision 'highest', so float32 results differ from the float64 reference only by
    # float32 rounding (2**-24 relative) accumulated over short sums and rotary angles up to ~100 rad:
    # <= 1.2e-6 observed; 1e-5 leaves a margin of 8.
    "float32": dict(rtol=1e-5, atol=1e-5),
    # One rounding of an O(1) result to bfloat16 (8-bit significand: relative step 2**-8 = 3.9e-3, at most half
    # of it per rounding), after float32 work or after bfloat16 probabilities (xla): <= 4e-3 observed.
    "bfloat16": dict(rtol=1e-2, atol=1e-2),
    # A chain of bfloat16 roundings (q, k, v rounded, then the output, then value-up): each rounding of q or k
    # moves an O(1) score by ~4e-3, which moves the pattern and the output by about as much: <= 7.5e-3 observed.
    "bfloat16_chain": dict(rtol=2e-2, atol=2e-2),
}
DTYPES = ["float32", "bfloat16"]


def close(actual, expected, tol: str, err_msg: str = ""):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, **TOL[tol], err_msg=err_msg)


def rand(rng: np.random.Generator, shape, dtype: str = "float32", scale: float = 1.0):
    """(jax array in ``dtype``, the same values as float64 NumPy): both sides get identical inputs."""
    x = jnp.asarray(rng.standard_normal(shape) * scale, dtype=dtype)
    return x, np.asarray(x.astype(jnp.float32), np.float64)


# ---------------------------------------------------------------------------- the NumPy reference
def np_repeat_kv(x, n_heads):
    """[B, K, G, D] -> [B, K, H, D]: query head h reads key/value head h // (H / G)."""
    r = n_heads // x.shape[2]
    return np.stack([x[:, :, h // r] for h in range(n_heads)], axis=2)


def np_scores(q, k, scale=None):
    b, qn, h, dh = q.shape
    scale = 1.0 / np.sqrt(dh) if scale is None else scale
    r = h // k.shape[2]
    s = np.zeros((b, h, qn, k.shape[1]))
    for bi in range(b):
        for hi in range(h):
            for i in range(qn):
                for j in range(k.shape[1]):
                    s[bi, hi, i, j] = np.dot(q[bi, i, hi], k[bi, j, hi // r]) * scale
    return s


def np_mask(batch, q_len, k_len, causal=False, q_offset=0, kv_lengths=None, q_lengths=None, window=None):
    """[B, 1, Q, K] bool, one entry at a time from the rules (True = may attend)."""
    offsets = np.broadcast_to(np.asarray(q_offset).reshape(-1), (batch,))
    m = np.zeros((batch, 1, q_len, k_len), bool)
    for b in range(batch):
        for i in range(q_len):
            pos = offsets[b] + i  # the query's absolute position; key j sits at position j
            for j in range(k_len):
                keep = True
                if causal and j > pos:
                    keep = False
                if window is not None and abs(pos - j) >= window:
                    keep = False
                if kv_lengths is not None and j >= kv_lengths[b]:
                    keep = False
                if q_lengths is not None and i >= q_lengths[b]:
                    keep = False
                m[b, 0, i, j] = keep
    return m


def np_softmax(s, mask=None):
    """Row-wise softmax over the kept entries; a row with no kept entry is all zeros."""
    mask = np.ones(s.shape, bool) if mask is None else np.broadcast_to(mask, s.shape)
    p = np.zeros(s.shape)
    for idx in np.ndindex(*s.shape[:-1]):
        keep = mask[idx]
        if keep.any():
            e = np.exp(s[idx][keep] - s[idx][keep].max())
            p[idx][keep] = e / e.sum()
    return p


def np_weighted(p, v):
    """o[b, i, h] = sum_j p[b, h, i, j] v[b, j, h // (H / G)]."""
    b, h, qn, kn = p.shape
    r = h // v.shape[2]
    o = np.zeros((b, qn, h, v.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            for i in range(qn):
                for j in range(kn):
                    o[bi, i, hi] += p[bi, hi, i, j] * v[bi, j, hi // r]
    return o


def np_attention(q, k, v, mask=None, scale=None):
    """(output [B, Q, H, Dv], pattern [B, H, Q, K])."""
    p = np_softmax(np_scores(q, k, scale), mask)
    return np_weighted(p, v), p


def np_project(x, w):
    """[B, T, D] x [D, H, E] -> [B, T, H, E], one head at a time."""
    return np.stack([x @ w[:, h, :] for h in range(w.shape[1])], axis=2)


def np_sum_heads(o, value_up=None):
    """sum_h o[:, :, h] @ value_up[h] (or sum_h o[:, :, h] for the full-rank value map)."""
    if value_up is None:
        return sum(o[:, :, h] for h in range(o.shape[2]))
    return sum(o[:, :, h] @ value_up[h] for h in range(o.shape[2]))


def np_multi_head(x, query, key, value_down, value_up, mask=None):
    """Multi-head attention computed head by head: each head's own q_h, k_h, v_h, pattern and value-up output."""
    b, t, _ = x.shape
    h, g = query.shape[1], key.shape[1]
    r = h // g
    y = 0.0
    for hi in range(h):
        q_h = x @ query[:, hi]  # [B, T, Dh]
        k_h = x @ key[:, hi // r]
        v_h = x @ value_down[:, hi // r]
        s = np.einsum("bqd,bkd->bqk", q_h, k_h) / np.sqrt(query.shape[-1])
        p = np_softmax(s, None if mask is None else mask[:, 0])
        o_h = np.einsum("bqk,bkd->bqd", p, v_h)
        y = y + (o_h if value_up is None else o_h @ value_up[hi])
    return y


def np_rotary(x, positions, base=10000.0):
    """Rotate the channel pair (i, i + Dh/2) by positions * base**(-2i/Dh), as a complex multiplication."""
    half = x.shape[-1] // 2
    pos = np.broadcast_to(positions, x.shape[:2]).astype(np.float64)
    out = np.zeros_like(x)
    for i in range(half):
        theta = pos * base ** (-2.0 * i / x.shape[-1])  # [B, T]
        z = (x[..., i] + 1j * x[..., i + half]) * np.exp(1j * theta)[:, :, None]
        out[..., i], out[..., i + half] = z.real, z.imag
    return out


def np_sinusoidal(max_len, d_model):
    """PE[pos, 2i] = sin(pos / 10000**(2i/D)), PE[pos, 2i+1] = cos(pos / 10000**(2i/D)) (Vaswani et al. 2017)."""
    pe = np.zeros((max_len, d_model))
    for pos in range(max_len):
        for c in range(d_model):
            angle = pos / 10000.0 ** ((c - c % 2) / d_model)
            pe[pos, c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
    return pe


# ---------------------------------------------------------------------------- scores and heads
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("g", [4, 2, 1])
def test_attention_scores(dtype, g):
    rng = np.random.default_rng(0)
    q, qn = rand(rng, (2, 3, 4, 8), dtype)
    k, kn = rand(rng, (2, 5, g, 8), dtype)
    s = jax.jit(attn.attention_scores)(q, k)
    assert s.shape == (2, 4, 3, 5) and s.dtype == jnp.float32
    # The scores are float32 whatever the input dtype (products of bf16 values are exact in float32).
    close(s, np_scores(qn, kn), "float32")
    close(jax.jit(attn.attention_scores, static_argnums=2)(q, k, 0.3), np_scores(qn, kn, 0.3), "float32")


def test_default_scale_is_inverse_sqrt_head_dim():
    assert attn.default_scale(16) == pytest.approx(0.25)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("g", [4, 2, 1])
def test_repeat_kv(dtype, g):
    x, xn = rand(np.random.default_rng(1), (2, 3, g, 5), dtype)
    out = attn.repeat_kv(x, 4)
    assert out.shape == (2, 3, 4, 5) and out.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(out, np.float64), np_repeat_kv(xn, 4))


def test_repeat_kv_rejects_non_divisor():
    x = jnp.zeros((1, 2, 3, 4))
    with pytest.raises(ValueError, match="do not divide"):
        attn.repeat_kv(x, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_and_merge_heads(dtype):
    x, xn = rand(np.random.default_rng(2), (2, 3, 12), dtype)
    split = attn.split_heads(x, 4)
    assert split.shape == (2, 3, 4, 3)
    expected = np.zeros((2, 3, 4, 3))
    for h in range(4):
        for d in range(3):
            expected[:, :, h, d] = xn[:, :, h * 3 + d]  # head h owns channels h*Dh .. h*Dh + Dh - 1
    np.testing.assert_array_equal(np.asarray(split, np.float64), expected)
    merged = attn.merge_heads(split)
    assert merged.shape == (2, 3, 12) and merged.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(merged, np.float64), xn)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("g", [4, 2])
def test_weighted_values(dtype, g):
    rng = np.random.default_rng(3)
    p = np_softmax(rng.standard_normal((2, 4, 3, 5)))
    v, vn = rand(rng, (2, 5, g, 6), dtype)
    o = attn.weighted_values(jnp.asarray(p, jnp.float32), v)
    assert o.shape == (2, 3, 4, 6) and o.dtype == v.dtype
    close(o, np_weighted(p, vn), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_qkv(dtype, g=2):
    rng = np.random.default_rng(4)
    x, xn = rand(rng, (2, 3, 8), dtype)
    x_kv, x_kvn = rand(rng, (2, 5, 8), dtype)
    wq, wqn = rand(rng, (8, 4, 2), dtype, 8**-0.5)
    wk, wkn = rand(rng, (8, g, 2), dtype, 8**-0.5)
    wv, wvn = rand(rng, (8, g, 6), dtype, 8**-0.5)
    project = jax.jit(attn.project_qkv)
    q, k, v = project(x, wq, wk, wv)
    assert (q.shape, k.shape, v.shape) == ((2, 3, 4, 2), (2, 3, g, 2), (2, 3, g, 6))
    for got, want in [(q, np_project(xn, wqn)), (k, np_project(xn, wkn)), (v, np_project(xn, wvn))]:
        close(got, want, dtype)
    # Keys and values read from another sequence (cross-attention shapes).
    _, k2, v2 = project(x, wq, wk, wv, x_kv=x_kv)
    assert k2.shape == (2, 5, g, 2)
    close(k2, np_project(x_kvn, wkn), dtype)
    close(v2, np_project(x_kvn, wvn), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_heads(dtype):
    rng = np.random.default_rng(5)
    o, on = rand(rng, (2, 3, 4, 5), dtype)
    w, wn = rand(rng, (4, 5, 7), dtype, 5**-0.5)
    y = attn.sum_heads(o, w)
    assert y.shape == (2, 3, 7)
    close(y, np_sum_heads(on, wn), dtype)
    # Full-rank value map: the heads' outputs are already D wide and are only summed.
    close(attn.sum_heads(o), np_sum_heads(on), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_heads_equals_merged_heads_times_output_projection(dtype):
    """sum_h o_h @ value_up[h] == concat_h(o_h) @ W_O with W_O = value_up reshaped [H*Dh, D]."""
    rng = np.random.default_rng(6)
    o, _ = rand(rng, (2, 3, 4, 5), dtype)
    w, _ = rand(rng, (4, 5, 7), dtype, 5**-0.5)
    w_o = w.reshape(4 * 5, 7)
    merged = np.asarray(attn.merge_heads(o), np.float64) @ np.asarray(w_o, np.float64)
    close(attn.sum_heads(o, w), merged, dtype)


# ---------------------------------------------------------------------------- masks
B, Q, K = 3, 4, 7


@pytest.mark.parametrize("q_offset", [0, 3, np.array([0, 3, 1])], ids=["offset0", "offset3", "offset_per_batch"])
def test_causal_mask(q_offset):
    m = attn.causal_mask(Q, K, jnp.asarray(q_offset))
    expected = np_mask(B, Q, K, causal=True, q_offset=q_offset)
    want_batch = 3 if np.ndim(q_offset) else 1
    assert m.shape == (want_batch, 1, Q, K) and m.dtype == jnp.bool_
    np.testing.assert_array_equal(np.broadcast_to(np.asarray(m), expected.shape), expected)


def test_causal_mask_square_is_lower_triangle():
    np.testing.assert_array_equal(np.asarray(attn.causal_mask(5, 5))[0, 0], np.tril(np.ones((5, 5), bool)))


@pytest.mark.parametrize(
    "kv_lengths,q_lengths",
    [([7, 3, 0], None), (None, [4, 1, 0]), ([5, 7, 2], [2, 4, 3])],
    ids=["kv", "q", "both"],
)
def test_padding_mask(kv_lengths, q_lengths):
    m = attn.padding_mask(
        None if kv_lengths is None else jnp.asarray(kv_lengths),
        K,
        None if q_lengths is None else jnp.asarray(q_lengths),
        Q,
    )
    expected = np_mask(B, Q, K, kv_lengths=kv_lengths, q_lengths=q_lengths)
    assert m.shape[0] == B and m.dtype == jnp.bool_
    np.testing.assert_array_equal(np.broadcast_to(np.asarray(m), expected.shape), expected)


def test_padding_mask_errors():
    with pytest.raises(ValueError, match="kv_lengths or q_lengths"):
        attn.padding_mask(None, K)
    with pytest.raises(ValueError, match="q_len"):
        attn.padding_mask(None, K, jnp.asarray([1, 2, 3]))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("q_offset", [0, 3, np.array([0, 3, 1])], ids=["offset0", "offset3", "offset_per_batch"])
@pytest.mark.parametrize("window", [1, 2, 3])
def test_sliding_window_mask(causal, q_offset, window):
    m = attn.sliding_window_mask(Q, K, window, jnp.asarray(q_offset), causal=causal)
    expected = np_mask(B, Q, K, causal=causal, q_offset=q_offset, window=window)
    np.testing.assert_array_equal(np.broadcast_to(np.asarray(m), expected.shape), expected)


def test_sliding_window_rejects_non_positive_window():
    with pytest.raises(ValueError, match="window"):
        attn.sliding_window_mask(Q, K, 0)


_MASK_COMBOS = list(
    itertools.product(
        [False, True],  # causal
        [0, 2, np.array([3, 0, 2])],  # q_offset
        [None, np.array([7, 4, 0])],  # kv_lengths
        [None, np.array([4, 2, 1])],  # q_lengths
        [None, 2],  # window
    )
)


@pytest.mark.parametrize("causal,q_offset,kv_lengths,q_lengths,window", _MASK_COMBOS)
def test_make_mask_combinations(causal, q_offset, kv_lengths, q_lengths, window):
    kw = dict(causal=causal, q_offset=q_offset, kv_lengths=kv_lengths, q_lengths=q_lengths, window=window)
    m = attn.make_mask(Q, K, **{k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()})
    if not causal and kv_lengths is None and q_lengths is None and window is None:
        assert m is None  # nothing to mask: the implementations skip masking altogether
        return
    expected = np_mask(B, Q, K, **kw)
    assert m.ndim == 4 and m.shape[1] == 1 and m.dtype == jnp.bool_
    np.testing.assert_array_equal(np.broadcast_to(np.asarray(m), expected.shape), expected)


def test_combine_masks():
    a = jnp.asarray([[True, False], [True, True]])
    b = jnp.asarray([[True, True], [False, True]])
    assert attn.combine_masks(None, None) is None
    np.testing.assert_array_equal(attn.combine_masks(a, None), a)
    np.testing.assert_array_equal(attn.combine_masks(a, None, b), np.asarray(a) & np.asarray(b))


# ---------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_masked_softmax_matches_reference(dtype, masked):
    s, sn = rand(np.random.default_rng(7), (B, 2, Q, K), dtype, 3.0)
    mask = np_mask(B, Q, K, causal=True, kv_lengths=[7, 3, 0], q_lengths=[4, 4, 2]) if masked else None
    p = jax.jit(attn.masked_softmax)(s, None if mask is None else jnp.asarray(mask))
    assert p.dtype == jnp.float32 and p.shape == s.shape  # float32 whatever the scores' dtype
    close(p, np_softmax(sn, mask), "float32")


def _softmax_case():
    """Scores with extreme values and a mask with kept, partly masked and fully masked rows."""
    s = np.array(
        [
            [0.0, 1.0, 2.0, 3.0],
            [1e30, -1e30, 0.0, 1e30],
            [3e38, 3e38, -3e38, 1.0],
            [-3e38, -3e38, -3e38, -3e38],
            [5.0, -1e30, 3e38, 2.0],  # fully masked below, extreme values included
            [-1e30, -1e30, -1e30, -1e30],
        ],
        np.float32,
    )
    mask = np.array(
        [
            [True, True, False, True],
            [True, True, True, False],
            [True, False, True, True],
            [True, True, True, True],
            [False, False, False, False],
            [False, True, True, False],
        ]
    )
    return s, mask


def test_masked_softmax_invariants():
    s, mask = _softmax_case()
    p = np.asarray(jax.jit(attn.masked_softmax)(jnp.asarray(s), jnp.asarray(mask)))
    assert np.isfinite(p).all()
    alive = mask.any(-1)
    np.testing.assert_allclose(p[alive].sum(-1), 1.0, rtol=0, atol=1e-6)
    assert (p[~mask] == 0.0).all(), "masked entries must be exactly zero"
    assert (p[~alive] == 0.0).all(), "a fully masked row must be exactly zero"
    assert (p >= 0).all()
    # Where the reference is defined in float64 the values agree too (1e30 - 1e30 etc. are exact).
    close(p, np_softmax(s.astype(np.float64), mask), "float32")


@pytest.mark.parametrize("big", [1e30, 3e38, -1e30, -3e38])
def test_masked_softmax_extreme_scores_unmasked(big):
    s = jnp.asarray([[big, 0.0, -1.0], [big, big, big]], jnp.float32)
    p = np.asarray(jax.jit(attn.masked_softmax)(s))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p[1], 1 / 3, atol=1e-6)  # equal scores, however extreme: uniform


def test_masked_softmax_gradients_are_finite_and_zero_where_masked():
    s, mask = _softmax_case()
    cot = np.random.default_rng(8).standard_normal(s.shape).astype(np.float32)

    def loss(x):
        return jnp.sum(attn.masked_softmax(x, jnp.asarray(mask)) * cot)

    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(s)))
    assert np.isfinite(g).all()
    assert (g[~mask] == 0.0).all(), "masked scores do not influence the pattern"
    assert (g[~mask.any(-1)] == 0.0).all(), "a fully masked row has zero gradient, not NaN"
    # The same through the whole attention: a query whose keys are all padding.
    rng = np.random.default_rng(9)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 3, 2, 4)), jnp.float32) for _ in range(3))

    def attn_loss(q, k, v):
        return jnp.sum(attn.attention(q, k, v, causal=True, kv_lengths=jnp.asarray([3, 0])) ** 2)

    grads = jax.jit(jax.grad(attn_loss, argnums=(0, 1, 2)))(q, k, v)
    for gr in grads:
        assert np.isfinite(np.asarray(gr)).all()
        assert (np.asarray(gr)[1] == 0.0).all()  # batch 1 sees no key at all


# ---------------------------------------------------------------------------- attend and multi-head
_ATTEND_CASES = {
    "none": dict(),
    "causal": dict(causal=True),
    "causal_padding": dict(causal=True, kv_lengths=[5, 2], q_lengths=[5, 3]),
    "window": dict(causal=True, window=2),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(_ATTEND_CASES))
def test_attend_reference(dtype, case, g=2):
    rng = np.random.default_rng(10)
    q, qn = rand(rng, (2, 5, 4, 8), dtype)
    k, kn = rand(rng, (2, 5, g, 8), dtype)
    v, vn = rand(rng, (2, 5, g, 6), dtype)
    kw = _ATTEND_CASES[case]
    mask_np = np_mask(2, 5, 5, **kw) if kw else None
    mask = attn.make_mask(5, 5, **{k: (jnp.asarray(v) if isinstance(v, list) else v) for k, v in kw.items()})
    out, pattern = jax.jit(attn.attend_reference)(q, k, v, mask)
    want_out, want_p = np_attention(qn, kn, vn, mask_np)
    assert out.dtype == q.dtype and pattern.dtype == jnp.float32
    close(pattern, want_p, "float32")  # the pattern is float32 from float32 scores: exact up to float32
    close(out, want_out, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "value_map,g,causal",
    [("factored", 4, True), ("factored", 2, True), ("factored", 1, False), ("full", 2, True), ("full", 4, False)],
)
def test_multi_head_attention_matches_head_by_head_reference(dtype, value_map, g, causal):
    """Output == sum over heads of each head's own value-up output, computed one head at a time."""
    rng = np.random.default_rng(11)
    b, t, d, h, dh = 2, 5, 12, 4, 3
    x, xn = rand(rng, (b, t, d), dtype)
    wq, wqn = rand(rng, (d, h, dh), dtype, d**-0.5)
    wk, wkn = rand(rng, (d, g, dh), dtype, d**-0.5)
    if value_map == "factored":
        wv, wvn = rand(rng, (d, g, dh), dtype, d**-0.5)
        wo, won = rand(rng, (h, dh, d), dtype, dh**-0.5)
    else:  # one full-rank D x D value map per head, no value-up
        wv, wvn = rand(rng, (d, g, d), dtype, d**-0.5)
        wo, won = None, None
    mha = attn.multi_head_attention  # eager: the per-op compile cache is shared by all cases, jit is not
    y, pattern = mha(x, wq, wk, wv, wo, causal=causal, return_pattern=True)
    mask = np_mask(b, t, t, causal=True) if causal else None
    assert y.shape == (b, t, d) and pattern.shape == (b, h, t, t)
    close(y, np_multi_head(xn, wqn, wkn, wvn, won, mask), "bfloat16_chain" if dtype == "bfloat16" else dtype)
    # Without the pattern the output is the same.
    np.testing.assert_array_equal(
        np.asarray(mha(x, wq, wk, wv, wo, causal=causal), np.float64), np.asarray(y, np.float64)
    )


# ---------------------------------------------------------------------------- positions
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_batch", [False, True])
def test_apply_rotary(dtype, per_batch):
    rng = np.random.default_rng(12)
    x, xn = rand(rng, (2, 5, 3, 8), dtype)
    pos = np.array([[3, 4, 5, 6, 7], [0, 1, 2, 9, 30]]) if per_batch else np.arange(5)[None] + 100
    rotary = jax.jit(apply_rotary, static_argnames="base")
    out = rotary(x, jnp.asarray(pos))
    assert out.shape == x.shape and out.dtype == x.dtype
    close(out, np_rotary(xn, pos), dtype)
    close(rotary(x, jnp.asarray(pos), base=500.0), np_rotary(xn, pos, 500.0), dtype)


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(13)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)

    def score(pq, pk):
        rq = apply_rotary(q, jnp.asarray([[pq]]))
        rk = apply_rotary(k, jnp.asarray([[pk]]))
        return float(jnp.sum(rq * rk))

    np.testing.assert_allclose(score(7, 3), score(4, 0), rtol=1e-5)
    np.testing.assert_allclose(score(20, 20), float(jnp.sum(q * k)), rtol=1e-5)
    assert abs(score(7, 3) - score(3, 7)) > 1e-3  # direction matters: the map is not symmetric


@pytest.mark.parametrize("d_model", [8, 7, 32])
def test_sinusoidal_table(d_model):
    table = sinusoidal_table(50, d_model)
    assert table.shape == (50, d_model) and table.dtype == np.float32
    close(table, np_sinusoidal(50, d_model), "float32")
