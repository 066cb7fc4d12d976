"""The chunked kernel against the reference: every mask, GQA, decode offsets, dtypes, transforms, memory.

Tolerances (max abs difference to the reference on inputs ~N(0, 1)): float32 forward 2e-6, float32
gradients 1e-5; bfloat16 inputs (float32 accumulation in both) 2e-2 forward, 5e-2 gradients,
against the float32 reference evaluated on the same bf16-rounded inputs. Lengths are deliberately
not multiples of the (small) blocks, so padding and partial blocks are exercised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import attention
from model.kernels.chunked import block_schedule, chunked_attention

FWD_TOL, GRAD_TOL = 2e-6, 1e-5
BF16_FWD_TOL, BF16_GRAD_TOL = 2e-2, 5e-2
BLOCKS = dict(block_q=16, block_k=8)


def _qkv(b, q_len, k_len, h, g, d, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, q_len, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, k_len, g, d), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, k_len, g, d), jnp.float32).astype(dtype)
    w = jax.random.normal(ks[3], (b, q_len, h, d), jnp.float32)  # cotangent weights for the loss
    return q, k, v, w


def _out_and_grads(fn, q, k, v, w):
    """fn(q, k, v) and the gradients of sum(fn * w), in one jitted call (eager dispatch is slow)."""

    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _max_diff(a, b):
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


# Shapes: (B, Q, K, H, G, Dh) and mask keyword arguments.
CASES = {
    "cross_lengths": ((2, 21, 50, 2, 2, 16), {}),
    "causal_gqa": ((2, 45, 45, 4, 2, 16), dict(causal=True)),
    "causal_mqa": ((1, 33, 33, 4, 1, 8), dict(causal=True)),
    "causal_offset_int": ((2, 13, 50, 4, 2, 16), dict(causal=True, q_offset=37)),
    "causal_offset_per_batch": ((3, 13, 50, 4, 2, 16), dict(causal=True, q_offset=np.array([0, 20, 37]))),
    "decode_per_batch": ((3, 1, 50, 4, 1, 16), dict(causal=True, q_offset=np.array([3, 27, 49]))),
    "kv_lengths": ((3, 30, 41, 2, 2, 16), dict(kv_lengths=np.array([41, 17, 3]))),
    "causal_padding": (
        (2, 40, 40, 2, 2, 16),
        dict(causal=True, kv_lengths=np.array([40, 23]), q_lengths=np.array([40, 11])),
    ),
    "window_causal": ((2, 53, 53, 4, 2, 16), dict(causal=True, window=11)),
    "window_bidirectional": ((2, 53, 53, 2, 2, 16), dict(window=9)),
    "window_offset_padding": (
        (2, 9, 60, 2, 2, 16),
        dict(causal=True, window=20, q_offset=np.array([45, 51]), kv_lengths=np.array([54, 60])),
    ),
}


# Cases another default case already covers (MQA in decode_per_batch, an int offset in the NumPy test,
# kv_lengths in causal_padding, a causal window in window_offset_padding) run with -m slow.
_SLOW = {"causal_mqa", "causal_offset_int", "kv_lengths", "window_causal"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in CASES])
def test_matches_reference_fp32(name):
    shape, kw = CASES[name]
    q, k, v, w = _qkv(*shape)
    kw = {key: (jnp.asarray(x) if isinstance(x, np.ndarray) else x) for key, x in kw.items()}
    ref, ref_g = _out_and_grads(lambda q, k, v: attention(q, k, v, implementation="reference", **kw), q, k, v, w)
    out, g = _out_and_grads(lambda q, k, v: chunked_attention(q, k, v, **kw, **BLOCKS), q, k, v, w)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert _max_diff(out, ref) <= FWD_TOL, name
    for a, b, which in zip(g, ref_g, "qkv", strict=True):
        assert _max_diff(a, b) <= GRAD_TOL, f"{name}: d{which}"


def _numpy_attention(q, k, v, mask):
    """An independent float64 NumPy reference: q [B,Q,H,D], k/v [B,K,G,D], mask [B,Q,K] (True keeps)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    r = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, r, axis=2), np.repeat(v, r, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask[:, None], s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    e = np.where(mask[:, None], np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
    z = e.sum(-1, keepdims=True)
    p = e / np.where(z == 0, 1.0, z)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_matches_numpy_with_default_blocks():
    # Default (large) blocks, a length that is not a multiple of them, and a causal window with an offset.
    b, q_len, k_len, h, g, d = 1, 300, 420, 4, 2, 32
    q, k, v, _ = _qkv(b, q_len, k_len, h, g, d)
    qp = 120 + np.arange(q_len)[:, None]
    kp = np.arange(k_len)[None, :]
    mask = ((kp <= qp) & (kp > qp - 200))[None]
    out = chunked_attention(q, k, v, causal=True, window=200, q_offset=120)
    np.testing.assert_allclose(np.asarray(out), _numpy_attention(q, k, v, mask), atol=FWD_TOL, rtol=0)


@pytest.mark.parametrize("name", ["causal_gqa", "window_offset_padding"])
def test_bfloat16_inputs(name):
    shape, kw = CASES[name]
    q, k, v, w = _qkv(*shape, dtype=jnp.bfloat16)
    kw = {key: (jnp.asarray(x) if isinstance(x, np.ndarray) else x) for key, x in kw.items()}
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref, ref_g = _out_and_grads(lambda q, k, v: attention(q, k, v, implementation="reference", **kw), *f32, w)
    out, g = _out_and_grads(lambda q, k, v: chunked_attention(q, k, v, **kw, **BLOCKS), q, k, v, w)
    assert out.dtype == jnp.bfloat16 and all(x.dtype == jnp.bfloat16 for x in g)
    assert _max_diff(out, ref) <= BF16_FWD_TOL
    for a, b in zip(g, ref_g, strict=True):
        assert _max_diff(a, b) <= BF16_GRAD_TOL


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_scale_folded_into_q_or_applied_to_scores(dtype):
    # An explicit scale that is not a power of two: float32 folds it into q (one rounding of q), bfloat16
    # keeps it on the float32 scores (folding would round q * scale to bf16); both match the reference.
    q, k, v, w = _qkv(2, 37, 37, 4, 2, 16, dtype=dtype)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    kw = dict(causal=True, scale=0.3)
    ref, ref_g = _out_and_grads(lambda q, k, v: attention(q, k, v, implementation="reference", **kw), *f32, w)
    out, g = _out_and_grads(lambda q, k, v: chunked_attention(q, k, v, **kw, **BLOCKS), q, k, v, w)
    fwd_tol, grad_tol = (FWD_TOL, GRAD_TOL) if dtype == jnp.float32 else (BF16_FWD_TOL, BF16_GRAD_TOL)
    assert _max_diff(out, ref) <= fwd_tol
    for a, b in zip(g, ref_g, strict=True):
        assert _max_diff(a, b) <= grad_tol


def test_entry_point_builds_no_dense_mask(monkeypatch):
    # 'chunked' gets only the mask arguments: the entry point never builds the [Q, K] mask for it.
    import model.attention as attention_module

    def no_dense_mask(*args, **kwargs):
        raise AssertionError("dense mask built for 'chunked'")

    monkeypatch.setattr(attention_module, "make_mask", no_dense_mask)
    q, k, v, _ = _qkv(2, 24, 24, 2, 2, 8)
    kw = dict(causal=True, window=5, kv_lengths=jnp.array([24, 10]), q_lengths=jnp.array([24, 9]))
    out = attention(q, k, v, implementation="chunked", **kw)
    monkeypatch.undo()
    assert _max_diff(out, attention(q, k, v, **kw)) <= FWD_TOL


def test_fully_masked_rows_are_zero_without_nan():
    # Sequence 1 has no keys at all; query rows 0..2 of sequence 0 see only keys outside their window.
    q, k, v, w = _qkv(2, 20, 20, 2, 2, 8)
    kv_lengths = jnp.array([20, 0])
    q_lengths = jnp.array([15, 20])
    kw = dict(causal=True, kv_lengths=kv_lengths, q_lengths=q_lengths, q_offset=-3)
    out, g = _out_and_grads(lambda q, k, v: chunked_attention(q, k, v, **kw, **BLOCKS), q, k, v, w)
    assert not any(bool(jnp.isnan(x).any()) for x in (out, *g))
    assert bool(jnp.all(out[1] == 0)) and bool(jnp.all(g[0][1] == 0))  # no keys: zero output, zero dq
    assert bool(jnp.all(out[0, :3] == 0)) and bool(jnp.all(out[0, 15:] == 0))  # before key 0; padded queries
    assert bool(jnp.all(g[1][1] == 0)) and bool(jnp.all(g[2][1] == 0))  # padding keys get no gradient
    assert _max_diff(out, jax.jit(lambda q, k, v: attention(q, k, v, **kw))(q, k, v)) <= FWD_TOL


def test_jit_vmap_grad_and_traced_offsets():
    q, k, v, w = _qkv(2, 24, 24, 2, 1, 8)
    offsets = jnp.array([0, 5])

    def f(q, k, v, off):
        return chunked_attention(q, k, v, causal=True, q_offset=off, **BLOCKS)

    def ref(q, k, v, off):
        return attention(q, k, v, causal=True, q_offset=off)

    # vmap over an extra leading axis (independent problems), offsets traced under jit, grad through it all
    stack = [jnp.stack([x, x[::-1]]) for x in (q, k, v)]

    def loss(fn, q, k, v, off):
        return jnp.sum(jax.vmap(lambda a, b, c: fn(a, b, c, off))(q, k, v) * w)

    out, g = jax.jit(jax.value_and_grad(lambda *a: loss(f, *a)))(*stack, offsets)
    out_ref, g_ref = jax.jit(jax.value_and_grad(lambda *a: loss(ref, *a)))(*stack, offsets)
    assert abs(float(out - out_ref)) <= 1e-4 and _max_diff(g, g_ref) <= GRAD_TOL


def test_entry_point_routes_to_chunked():
    # The full-rank value map (Dv = D != Dh) goes through the entry point's padding of q and k.
    q, k, _, _ = _qkv(2, 19, 19, 4, 2, 16)
    v_wide = jax.random.normal(jax.random.key(9), (2, 19, 2, 40))

    @jax.jit
    def both(q, k, v):
        kw = dict(causal=True, window=7)
        return attention(q, k, v, implementation="chunked", **kw), attention(q, k, v, **kw)

    out, ref = both(q, k, v_wide)
    assert out.shape == (2, 19, 4, 40) and _max_diff(out, ref) <= FWD_TOL


def test_masked_blocks_are_skipped():
    # Causal: query block i visits key blocks 0..i, only the diagonal one with a mask.
    s = np.asarray(block_schedule(1024, 1024, causal=True, block_q=256, block_k=256))
    visited = int(np.sum(s[:, 3] - s[:, 0]))
    masked = visited - int(np.sum(s[:, 2] - s[:, 1]))
    assert (visited, masked) == (10, 4)  # of 16 block pairs
    # A window of 256 keys: at most 2 key blocks per query block, however long the sequence.
    s = np.asarray(block_schedule(8192, 8192, causal=True, window=256, block_q=256, block_k=256))
    assert int(np.max(s[:, 3] - s[:, 0])) == 2 and int(np.sum(s[:, 3] - s[:, 0])) == 2 * 32 - 1
    # Padding: nothing beyond the longest sequence is visited.
    s = np.asarray(block_schedule(512, 4096, kv_lengths=jnp.array([300, 700]), block_q=256, block_k=256))
    assert int(np.max(s[:, 3])) == 3


def test_memory_is_linear_in_length():
    # XLA's compiled scratch for fwd+bwd at T=2048 is far below one [B, H, T, T] float32 score array.
    b, t, h, d = 1, 2048, 2, 32
    q = jnp.zeros((b, t, h, d))
    one_pattern = t * t * 4 * b * h

    def scratch(impl):
        f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, causal=True, implementation=impl))))
        return f.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

    assert scratch("chunked") < one_pattern / 8
    assert scratch("reference") >= one_pattern  # the dense path does hold the pattern


def test_bad_block_size_is_a_clear_error():
    q, k, v, _ = _qkv(1, 8, 8, 2, 2, 8)
    with pytest.raises(ValueError, match="block sizes must be positive"):
        chunked_attention(q, k, v, block_q=0)
