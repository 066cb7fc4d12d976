"""The pure attention functions under JAX transformations: jit, vmap, grad, and pmap over 8 CPU devices.

Gradients are checked against central finite differences of the float64 NumPy reference of
test_attention.py, not against another JAX computation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import close, np_attention, np_mask, np_multi_head, rand

from model import attention as attn

# Central differences in float64 with step 1e-5 are exact to ~1e-9 on these O(1) functions; the JAX gradient is
# float32, so the float32 tolerance applies. Gradients are O(1), so 1e-4 absolute bounds ~100 float32 roundings.
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)


def numeric_grad(f, x, eps=1e-5):
    """d f / d x by central differences, one entry at a time (float64)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
    return g


def _qkv(seed=0, b=2, q_len=4, k_len=4, h=4, g=2, dh=4, dv=4):
    rng = np.random.default_rng(seed)
    q, qn = rand(rng, (b, q_len, h, dh))
    k, kn = rand(rng, (b, k_len, g, dh))
    v, vn = rand(rng, (b, k_len, g, dv))
    return (q, k, v), (qn, kn, vn)


# ---------------------------------------------------------------------------- jit
def test_jit_with_traced_offsets_and_lengths():
    """Decoding passes q_offset and lengths as traced values: one compiled function serves every step."""
    (q, k, v), (qn, kn, vn) = _qkv(q_len=2, k_len=8)
    f = jax.jit(functools.partial(attn.attention, causal=True, window=3))
    for q_offset, kv_lengths in [(0, [2, 2]), (5, [7, 7]), (np.array([6, 1]), np.array([8, 3]))]:
        out = f(q, k, v, q_offset=jnp.asarray(q_offset), kv_lengths=jnp.asarray(kv_lengths))
        mask = np_mask(2, 2, 8, causal=True, window=3, q_offset=q_offset, kv_lengths=kv_lengths)
        close(out, np_attention(qn, kn, vn, mask)[0], "float32", err_msg=f"q_offset={q_offset}")
    assert f._cache_size() == 2  # the int offsets share one compile; the [B] offset needs a second


# ---------------------------------------------------------------------------- vmap
def test_vmap_over_an_extra_leading_axis():
    """vmap over N independent problems (each with its own lengths) equals a loop over them."""
    n = 3
    rng = np.random.default_rng(2)
    qs, qn = rand(rng, (n, 2, 4, 4, 4))
    ks, kn = rand(rng, (n, 2, 5, 2, 4))
    vs, vn = rand(rng, (n, 2, 5, 2, 4))
    kv_lengths = np.array([[5, 3], [1, 5], [4, 4]])
    f = functools.partial(attn.attention, causal=True, q_offset=1)
    out = jax.vmap(f)(qs, ks, vs, kv_lengths=jnp.asarray(kv_lengths))
    assert out.shape == (n, 2, 4, 4, 4)
    for i in range(n):
        mask = np_mask(2, 4, 5, causal=True, q_offset=1, kv_lengths=kv_lengths[i])
        close(out[i], np_attention(qn[i], kn[i], vn[i], mask)[0], "float32", err_msg=f"problem {i}")


def test_vmap_multi_head_attention_over_a_stack_of_weights():
    """One input through L different weight sets at once (what a scan over layers' weights sees)."""
    rng = np.random.default_rng(3)
    n_layers, d, h, g, dh = 3, 8, 4, 2, 2
    x, xn = rand(rng, (2, 5, d))
    wq, wqn = rand(rng, (n_layers, d, h, dh), scale=d**-0.5)
    wk, wkn = rand(rng, (n_layers, d, g, dh), scale=d**-0.5)
    wv, wvn = rand(rng, (n_layers, d, g, dh), scale=d**-0.5)
    wo, won = rand(rng, (n_layers, h, dh, d), scale=dh**-0.5)
    f = functools.partial(attn.multi_head_attention, causal=True)
    out = jax.vmap(f, in_axes=(None, 0, 0, 0, 0))(x, wq, wk, wv, wo)
    assert out.shape == (n_layers, 2, 5, d)
    mask = np_mask(2, 5, 5, causal=True)
    for i in range(n_layers):
        close(out[i], np_multi_head(xn, wqn[i], wkn[i], wvn[i], won[i], mask), "float32", err_msg=f"layer {i}")


# ---------------------------------------------------------------------------- grad
@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_grad_of_attention_matches_finite_differences(impl):
    (q, k, v), (qn, kn, vn) = _qkv(4, b=2, q_len=3, k_len=4, h=2, g=1, dh=3, dv=2)
    kw = dict(causal=True, q_offset=1, kv_lengths=[4, 2])
    mask = np_mask(2, 3, 4, **kw)
    cot = np.random.default_rng(5).standard_normal((2, 3, 2, 2))

    def loss(q, k, v):
        out = attn.attention(q, k, v, implementation=impl, causal=True, q_offset=1, kv_lengths=jnp.asarray([4, 2]))
        return jnp.sum(out * cot)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    wants = [
        numeric_grad(lambda x: np.sum(np_attention(x, kn, vn, mask)[0] * cot), qn),
        numeric_grad(lambda x: np.sum(np_attention(qn, x, vn, mask)[0] * cot), kn),
        numeric_grad(lambda x: np.sum(np_attention(qn, kn, x, mask)[0] * cot), vn),
    ]
    for name, got, want in zip("qkv", grads, wants, strict=True):
        assert np.abs(want).max() > 1e-2  # the check has something to check
        np.testing.assert_allclose(np.asarray(got, np.float64), want, **GRAD_TOL, err_msg=f"d loss / d {name}")


def test_grad_of_multi_head_attention_wrt_weights_matches_finite_differences():
    rng = np.random.default_rng(6)
    d, h, g, dh = 4, 2, 1, 2
    x, xn = rand(rng, (1, 3, d))
    ws = [rand(rng, s, scale=0.5) for s in [(d, h, dh), (d, g, dh), (d, g, dh), (h, dh, d)]]
    cot = rng.standard_normal((1, 3, d))
    mask = np_mask(1, 3, 3, causal=True)

    def loss(*w):
        return jnp.sum(attn.multi_head_attention(x, *w, causal=True) * cot)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*[w for w, _ in ws])
    w_np = [wn for _, wn in ws]
    for i, (name, got) in enumerate(zip(["query", "key", "value_down", "value_up"], grads, strict=True)):

        def f(wi, i=i):
            w = list(w_np)
            w[i] = wi
            return np.sum(np_multi_head(xn, *w, mask) * cot)

        np.testing.assert_allclose(np.asarray(got, np.float64), numeric_grad(f, w_np[i]), **GRAD_TOL, err_msg=name)


def test_attention_dropout_is_unbiased_and_differentiable():
    """Dropping entries of the pattern and rescaling by 1/(1-rate) leaves the expected output unchanged."""
    (q, k, v), (qn, kn, vn) = _qkv(7, b=1, q_len=3, k_len=3, h=2, g=2, dh=4, dv=4)
    rate, n = 0.3, 4000

    def dropped(key, q=q):
        return attn.attention(q, k, v, causal=True, dropout_rate=rate, dropout_rng=key)

    keys = jax.random.split(jax.random.key(0, impl="rbg"), n)  # rbg: cheap to compile on CPU, unlike threefry
    outs = np.asarray(jax.jit(jax.vmap(dropped))(keys), np.float64)  # [N, B, Q, H, Dv]
    want = np_attention(qn, kn, vn, np_mask(1, 3, 3, causal=True))[0]
    assert np.abs(outs[0] - outs[1]).max() > 1e-3  # different keys drop different entries
    stderr = outs.std(0) / np.sqrt(n)
    # The first query sees only itself: its one pattern entry is kept (x 1/(1-rate)) or dropped, never exact.
    assert (np.abs(outs.mean(0) - want) <= 5 * stderr + 1e-6).all(), np.abs(outs.mean(0) - want).max()
    close(dropped(keys[0]), outs[0], "float32")  # the same key drops the same entries
    grads = jax.jit(jax.grad(lambda q: jnp.sum(dropped(keys[0], q) ** 2)))(q)
    assert np.isfinite(np.asarray(grads)).all() and np.abs(np.asarray(grads)).max() > 0


# ---------------------------------------------------------------------------- pmap over 8 CPU devices
def test_eight_cpu_devices():
    assert jax.device_count() == 8, "tests/conftest.py must give every test process 8 CPU devices"


def test_pmap_attention_equals_unmapped():
    """Each of 8 devices attends for one sequence of the batch (with its own offset and length)."""
    assert jax.device_count() == 8
    (q, k, v), _ = _qkv(8, b=8, q_len=2, k_len=6)
    q_offset = jnp.asarray([4, 0, 3, 4, 1, 2, 4, 0])
    kv_lengths = jnp.asarray([6, 2, 5, 6, 3, 4, 6, 1])

    def f(q, k, v, q_offset, kv_lengths):
        return attn.attention(q, k, v, causal=True, q_offset=q_offset, kv_lengths=kv_lengths)

    def per_device(x):  # [8, ...] -> [8, 1, ...]: one sequence per device
        return x[:, None]

    mapped = jax.pmap(f)(*map(per_device, (q, k, v, q_offset, kv_lengths)))
    assert len(mapped.sharding.device_set) == 8
    close(np.asarray(mapped)[:, 0], np.asarray(f(q, k, v, q_offset, kv_lengths), np.float64), "float32")


def test_pmap_multi_head_attention_equals_unmapped():
    assert jax.device_count() == 8
    rng = np.random.default_rng(9)
    d, h, g, dh = 8, 4, 2, 2
    x, _ = rand(rng, (8, 3, d))
    ws = [rand(rng, s, scale=d**-0.5)[0] for s in [(d, h, dh), (d, g, dh), (d, g, dh), (h, dh, d)]]
    f = functools.partial(attn.multi_head_attention, causal=True)
    mapped = jax.pmap(f, in_axes=(0, None, None, None, None))(x[:, None], *ws)  # weights replicated
    close(np.asarray(mapped)[:, 0], np.asarray(f(x, *ws), np.float64), "float32")


# ------------------------------------------------------------------ the chunked kernel as per-device code
def _chunked(q, k, v, **kw):
    return attn.attention(q, k, v, implementation="chunked", **kw)


def test_chunked_inside_shard_map_batch_split_with_offsets_and_lengths():
    """jax.shard_map over 4 devices, each with two sequences: values against NumPy, gradients against the
    unsharded reference. T = 300 is not a multiple of the 128 blocks; the loop carries must take the
    inputs' varying manual axes (they failed to before)."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:4]), ("x",))
    (q, k, v), (qn, kn, vn) = _qkv(11, b=8, q_len=300, k_len=300, h=4, g=2, dh=8, dv=8)
    q_offset = jnp.asarray([0, 0, 5, 0, 0, 2, 0, 0])
    kv_lengths = jnp.asarray([300, 17, 300, 129, 300, 256, 1, 300])

    def f(q, k, v, off, lens):
        return _chunked(q, k, v, causal=True, q_offset=off, kv_lengths=lens)

    sharded = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    out = sharded(q, k, v, q_offset, kv_lengths)
    mask = np_mask(8, 300, 300, causal=True, q_offset=np.asarray(q_offset), kv_lengths=np.asarray(kv_lengths))
    want, _ = np_attention(qn, np.repeat(kn, 2, axis=2), np.repeat(vn, 2, axis=2), mask)
    close(out, want, "float32")

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, q_offset, kv_lengths) ** 2)

    ref = functools.partial(attn.attention, causal=True, implementation="reference")
    got = jax.jit(jax.grad(loss(sharded), argnums=(0, 1, 2)))(q, k, v)
    exp = jax.grad(loss(lambda q, k, v, o, n: ref(q, k, v, q_offset=o, kv_lengths=n)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, exp, strict=True):  # some are sums over 300 rows (the sequence of length 1): rtol counts
        close(a, np.asarray(b, np.float64), "float32")


def test_chunked_inside_shard_map_query_heads_split_over_replicated_keys():
    """Multi-query attention with the query heads split over 2 devices and the one key/value head replicated:
    the loop carries vary over the axis only through q."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
    (q, k, v), (qn, kn, vn) = _qkv(12, b=2, q_len=200, k_len=200, h=4, g=1, dh=8, dv=8)
    f = functools.partial(_chunked, causal=True)
    heads = P(None, None, "x")
    sharded = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(heads, P(), P()), out_specs=heads))
    want, _ = np_attention(qn, np.repeat(kn, 4, axis=2), np.repeat(vn, 4, axis=2), np_mask(2, 200, 200, causal=True))
    close(sharded(q, k, v), want, "float32")
    g = jax.jit(jax.grad(lambda q: jnp.sum(sharded(q, k, v)), argnums=0))(q)
    g_ref = jax.grad(lambda q: jnp.sum(attn.attention(q, k, v, causal=True, implementation="reference")))(q)
    close(g, np.asarray(g_ref, np.float64), "float32")


def test_chunked_under_pmap_equals_unmapped():
    (q, k, v), (qn, kn, vn) = _qkv(13, b=8, q_len=150, k_len=150, h=2, g=2, dh=4, dv=4)
    f = functools.partial(_chunked, causal=True, window=40)
    mapped = jax.pmap(f)(q[:, None], k[:, None], v[:, None])
    want, _ = np_attention(qn, kn, vn, np_mask(8, 150, 150, causal=True, window=40))
    close(np.asarray(mapped)[:, 0], want, "float32")
