"""attention(): 'reference' and 'xla' agree in values and gradients under every kind of mask; shape errors.

Both implementations are also checked against the NumPy reference of test_attention.py, so agreeing
with each other cannot hide a shared mistake.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import close, np_attention, np_mask, rand

from model import attention as attn

H, DH = 4, 8

# name -> (q_len, k_len, G key/value heads, Dv value head width, mask keyword arguments of attention()); batch 2.
# Every mask kind once; across them GQA (G=2), multi-query (G=1) and multi-head (G=H), value heads wider
# than Dh (Dv=24: the full-rank value map, Dv = D) or narrower, and an explicit scale. One compiled program
# holds all cases (see ``results``), so each case costs compile time: combinations share a case.
CASES = {
    "none": (5, 5, 4, DH, dict()),
    "causal": (5, 5, 2, DH, dict(causal=True)),
    "causal_wide_values_scale": (5, 5, 2, 24, dict(causal=True, scale=0.7)),
    # Decode: 2 new queries at positions 6, 7 against a full cache of 8 keys.
    "decode_offset_int": (2, 8, 1, DH, dict(causal=True, q_offset=6)),
    # Decode against a cache of 8 slots of which only the first 5 are filled.
    "decode_offset_int_partial_cache": (2, 8, 2, 24, dict(causal=True, q_offset=3, kv_lengths=[5, 5])),
    # Sequences of the batch at different lengths: one query each, at positions 7 and 3.
    "decode_offset_per_batch": (1, 8, 2, DH, dict(causal=True, q_offset=[7, 3], kv_lengths=[8, 4])),
    "padding_kv": (5, 5, 4, 4, dict(kv_lengths=[5, 2])),
    "padding_q": (5, 5, 2, DH, dict(q_lengths=[5, 2])),  # padded queries: fully masked rows
    "padding_both_one_empty": (5, 5, 1, 24, dict(kv_lengths=[4, 0], q_lengths=[5, 3])),
    "window_bidirectional": (6, 6, 1, DH, dict(window=2)),
    "window_causal_padding": (6, 6, 4, DH, dict(causal=True, window=3, kv_lengths=[6, 4], q_lengths=[6, 5])),
    "window_decode_per_batch": (2, 8, 2, 24, dict(causal=True, window=3, q_offset=[6, 2], kv_lengths=[8, 4])),
}
BF16_CASES = ["causal", "padding_both_one_empty", "window_decode_per_batch"]


def _inputs(case, dtype="float32"):
    q_len, k_len, g, dv, _ = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    q, qn = rand(rng, (2, q_len, H, DH), dtype)
    k, kn = rand(rng, (2, k_len, g, DH), dtype)
    v, vn = rand(rng, (2, k_len, g, dv), dtype)
    cot = jnp.asarray(rng.standard_normal((2, q_len, H, dv)), jnp.float32)
    return (q, k, v, cot), (qn, kn, vn)


def _jax_kwargs(kw):
    return {k: (jnp.asarray(v) if isinstance(v, list) else v) for k, v in kw.items()}


def _np_expected(case, qn, kn, vn):
    q_len, k_len, _, _, kw = CASES[case]
    mask_kw = {k: v for k, v in kw.items() if k != "scale"}
    mask = np_mask(2, q_len, k_len, **mask_kw)
    return np_attention(qn, kn, vn, mask, kw.get("scale"))[0], mask


@pytest.fixture(scope="module")
def results():
    """Values and gradients of both implementations for every case, from ONE compiled program.

    Compiling is what costs time on CPU; one program for all cases compiles about twice as fast as one per case.
    """

    def all_cases(inputs, inputs_bf16):
        out = {}
        for case, (q, k, v, cot) in inputs.items():
            kw = _jax_kwargs(CASES[case][4])
            for impl in ("reference", "xla"):

                def loss(q, k, v, impl=impl, kw=kw, cot=cot):
                    o = attn.attention(q, k, v, implementation=impl, **kw)
                    return jnp.sum(o * cot), o

                grads, o = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
                out[case, impl] = (o, *grads)
        for case, (q, k, v, _) in inputs_bf16.items():
            kw = _jax_kwargs(CASES[case][4])
            for impl in ("reference", "xla"):
                out[case, impl, "bfloat16"] = attn.attention(q, k, v, implementation=impl, **kw)
        return out

    inputs = {case: _inputs(case)[0] for case in CASES}
    inputs_bf16 = {case: _inputs(case, "bfloat16")[0] for case in BF16_CASES}
    return jax.jit(all_cases)(inputs, inputs_bf16)


@pytest.mark.parametrize("case", list(CASES))
def test_reference_and_xla_agree_in_values_and_gradients(results, case):
    q_len, _, _, dv, _ = CASES[case]
    _, (qn, kn, vn) = _inputs(case)
    ref, xla = results[case, "reference"], results[case, "xla"]
    for name, a, b in zip(["output", "dq", "dk", "dv"], ref, xla, strict=True):
        assert a.shape == b.shape and np.isfinite(np.asarray(a)).all() and np.isfinite(np.asarray(b)).all(), name
        close(b, np.asarray(a, np.float64), "float32", err_msg=f"xla vs reference: {name}")
    assert ref[0].shape == (2, q_len, H, dv)

    # Both against the NumPy reference, so that agreeing with each other cannot hide a shared mistake.
    want, mask = _np_expected(case, qn, kn, vn)
    close(ref[0], want, "float32", err_msg="reference vs NumPy")
    close(xla[0], want, "float32", err_msg="xla vs NumPy")
    # A query that may attend to no key outputs exactly 0 and passes no gradient back.
    dead = ~mask.any(-1)[:, 0]  # [B, Q]
    for impl_out in (ref[0], xla[0]):
        assert (np.asarray(impl_out)[dead] == 0.0).all()
    if dead.any():
        assert (np.asarray(ref[1])[dead] == 0.0).all() and (np.asarray(xla[1])[dead] == 0.0).all()


@pytest.mark.parametrize("case", BF16_CASES)
def test_reference_and_xla_agree_in_bfloat16(results, case):
    _, (qn, kn, vn) = _inputs(case, "bfloat16")
    want, _ = _np_expected(case, qn, kn, vn)
    for impl in ("reference", "xla"):
        out = results[case, impl, "bfloat16"]
        assert out.dtype == jnp.bfloat16, impl
        close(out, want, "bfloat16", err_msg=impl)
    ref = np.asarray(results[case, "reference", "bfloat16"].astype(jnp.float32), np.float64)
    close(results[case, "xla", "bfloat16"], ref, "bfloat16")


def test_return_pattern_is_the_softmax_pattern():
    case = "window_decode_per_batch"
    q_len, k_len, _, _, kw = CASES[case]
    (q, k, v, _), (qn, kn, vn) = _inputs(case)
    out, pattern = jax.jit(lambda q, k, v: attn.attention(q, k, v, return_pattern=True, **_jax_kwargs(kw)))(q, k, v)
    want_out, want_p = np_attention(qn, kn, vn, np_mask(2, q_len, k_len, **kw))
    assert pattern.shape == (2, H, q_len, k_len) and pattern.dtype == jnp.float32
    close(pattern, want_p, "float32")
    close(out, want_out, "float32")


# ---------------------------------------------------------------------------- errors
def test_attention_shape_errors():
    q = jnp.zeros((2, 3, 4, 8))
    k = jnp.zeros((2, 5, 2, 8))
    with pytest.raises(ValueError, match=r"\[batch, length, heads, head_dim\]"):
        attn.attention(q[0], k, k)
    with pytest.raises(ValueError, match=r"\[batch, length, heads, head_dim\]"):
        attn.attention(q, k[..., None], k)
    with pytest.raises(ValueError, match="incompatible shapes"):
        attn.attention(q, k, k[:, :4])  # keys and values of different lengths
    with pytest.raises(ValueError, match="incompatible shapes"):
        attn.attention(q, k[:1], k[:1])  # batch sizes differ
    with pytest.raises(ValueError, match="incompatible shapes"):
        attn.attention(q, k[..., :6], k)  # q and k head widths differ
    with pytest.raises(ValueError, match="do not divide"):
        attn.attention(q, jnp.zeros((2, 5, 3, 8)), jnp.zeros((2, 5, 3, 8)))


def test_attention_implementation_errors():
    q = jnp.zeros((1, 2, 2, 4))
    with pytest.raises(ValueError, match="unknown attention implementation 'nope'"):
        attn.attention(q, q, q, implementation="nope")
    with pytest.raises(ValueError, match="implementation='reference'"):
        attn.attention(q, q, q, implementation="xla", return_pattern=True)
    assert {"reference", "xla"} <= set(attn.available_implementations())


def test_registry_is_open_and_config_lists_it(monkeypatch):
    # A user's implementation, registered with a record, is reachable by name and valid in a ModelConfig;
    # without a dense mask it gets the mask arguments and no mask.
    from model.config import IMPLEMENTATIONS, ModelConfig
    from model.kernels.registry import REGISTRY, Implementation, register

    assert IMPLEMENTATIONS == ("auto", "reference", "xla", "chunked", "ring", "cudnn", "pallas")
    seen = {}

    def mine(q, k, v, **kwargs):
        seen.update(kwargs)
        return jnp.ones_like(q)

    monkeypatch.setitem(REGISTRY, "mine", REGISTRY["xla"])  # restored after the test
    register(Implementation("mine", mine, dense_mask=False))
    q = jnp.zeros((1, 3, 2, 4))
    assert bool(jnp.all(attn.attention(q, q, q, causal=True, implementation="mine") == 1))
    assert "mask" not in seen and seen["causal"] is True
    assert ModelConfig(attention_impl="mine").attention_impl == "mine"
