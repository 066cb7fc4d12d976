"""Ring attention (model/kernels/ring.py) against dense attention on real CPU meshes of 4 and 8 devices.

The reference is a naive dense attention written here (einsum, masked softmax over all T keys);
float32 tolerances: 1e-5 absolute on outputs and on gradients of a scalar loss wrt q, k and v.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from model import attention as attn
from model.kernels.ring import ring_attention

ATOL = 1e-5  # float32


def seq_mesh(n: int, data: int = 1):
    return jax.make_mesh(
        (data, n), ("data", "sequence"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[: n * data]
    )


def dense_attention(q, k, v, mask=None):
    """Naive attention: q [B,T,H,Dh], k/v [B,T,G,Dh], mask [B|1,T,T] bool or None -> [B,T,H,Dh]."""
    r = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, r, axis=2), jnp.repeat(v, r, axis=2)  # query head h reads kv head h // r
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = jnp.where(mask[:, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    p = jnp.where(jnp.isnan(p), 0.0, p)  # a query that may see no key gets 0
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


def qkvw(b, t, h, g, dh, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, t, h, dh), jnp.float32)
    k = jax.random.normal(ks[1], (b, t, g, dh), jnp.float32)
    v = jax.random.normal(ks[2], (b, t, g, dh), jnp.float32)
    w = jax.random.normal(ks[3], (b, t, h, dh), jnp.float32)  # weights of the scalar loss sum(out * w)
    return q, k, v, w


def assert_ring_matches(ring_fn, dense_fn, q, k, v, w):
    """Outputs and the gradients of sum(out * w) wrt q, k, v agree (one compiled function per side)."""

    def value_and_grads(fn):
        def run(q, k, v, w):  # the inputs are arguments, not constants that XLA would fold at compile time
            out, vjp = jax.vjp(fn, q, k, v)
            return out, vjp(w)

        return jax.jit(run)(q, k, v, w)

    out, grads = value_and_grads(ring_fn)
    ref, ref_grads = value_and_grads(dense_fn)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=ATOL, rtol=0)
    for name, g_ring, g_ref in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g_ring), np.asarray(g_ref), atol=ATOL, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("n", [4, 8])
@pytest.mark.parametrize("causal", [True, False])
def test_ring_equals_dense_at_length_1024(n, causal):
    t = 1024
    q, k, v, w = qkvw(1, t, 2, 2, 16)
    mesh = seq_mesh(n)
    mask = jnp.tril(jnp.ones((t, t), bool))[None] if causal else None
    assert_ring_matches(
        lambda q, k, v: ring_attention(q, k, v, mesh, causal=causal),
        lambda q, k, v: dense_attention(q, k, v, mask),
        q,
        k,
        v,
        w,
    )


@pytest.mark.parametrize(
    "h,g,kwargs",
    [
        (4, 1, dict(causal=True, window=10, q_offset=3)),  # multi-query, sliding window, offset queries
        (2, 2, dict(causal=False, window=7)),
        (4, 2, dict(causal=True, kv_lengths=np.array([64, 37]), q_lengths=np.array([64, 20]))),  # GQA, padding
        (2, 2, dict(causal=False, kv_lengths=np.array([5, 64]))),
    ],
)
def test_ring_masks_and_grouped_heads_match_the_reference(h, g, kwargs):
    """Windows, padding (wholly masked query rows give 0), offsets and GQA mean what they mean in attention()."""
    q, k, v, w = qkvw(2, 64, h, g, 8, seed=2)
    mesh = seq_mesh(4)
    mask_kwargs = {key: (jnp.asarray(val) if isinstance(val, np.ndarray) else val) for key, val in kwargs.items()}
    mask = attn.make_mask(64, 64, **mask_kwargs)[:, 0]  # [B|1, T, T]
    assert_ring_matches(
        lambda q, k, v: ring_attention(q, k, v, mesh, **mask_kwargs),
        lambda q, k, v: dense_attention(q, k, v, mask),
        q,
        k,
        v,
        w,
    )
    if "q_lengths" in kwargs:  # padded queries see nothing: exactly zero, not NaN
        out = jax.jit(lambda q, k, v: ring_attention(q, k, v, mesh, **mask_kwargs))(q, k, v)
        assert np.all(np.asarray(out[1, 20:]) == 0.0)


def test_registered_implementation_uses_the_current_mesh_and_keeps_the_batch_split():
    """attention(implementation='ring') under jax.set_mesh; the ring is manual only over 'sequence', so a
    batch split over 'data' stays split (2 x 4 devices)."""
    mesh = seq_mesh(4, data=2)
    q, k, v, _ = qkvw(4, 64, 2, 2, 8, seed=3)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "sequence"))
    q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))
    with jax.set_mesh(mesh):
        out = jax.jit(lambda q, k, v: attn.attention(q, k, v, causal=True, implementation="ring"))(q, k, v)
    assert out.sharding.spec[:2] == ("data", "sequence")
    mask = jnp.tril(jnp.ones((64, 64), bool))[None]
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense_attention(q, k, v, mask)), atol=ATOL, rtol=0)


def test_causal_ring_skips_masked_blocks_with_a_conditional():
    """Causal: a conditional decides per block whether to compute; without a mask there is none to decide."""
    q, k, v, _ = qkvw(1, 64, 2, 2, 8)
    mesh = seq_mesh(4)

    def hlo(causal):
        fn = jax.jit(lambda q, k, v: ring_attention(q, k, v, mesh, causal=causal))
        return fn.lower(q, k, v).as_text()

    assert "stablehlo.case" in hlo(True) or "stablehlo.if" in hlo(True)
    assert "stablehlo.case" not in hlo(False) and "stablehlo.if" not in hlo(False)


def test_ring_errors_are_clear():
    q, k, v, _ = qkvw(1, 60, 2, 2, 8)
    with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
        ring_attention(q, k, v)  # no mesh anywhere
    with pytest.raises(ValueError, match="length 60 is not divisible by the 'sequence' mesh axis of size 8"):
        ring_attention(q, k, v, seq_mesh(8))
    with pytest.raises(ValueError, match="int q_offset"):
        ring_attention(q, k, v, seq_mesh(4), q_offset=jnp.zeros((1,), jnp.int32))
