"""What 'auto' picks per backend/dtype/shape/mask, that it is logged once and overridable, and the
accelerator kernels: clear errors where they cannot run, Pallas kernels in interpret mode on CPU.

Accelerators are not available here, so the GPU/TPU rules are tested through ``auto_choice`` with
``backend='gpu'/'tpu'``, and the Pallas kernels run in Pallas's interpreter (tolerance 2e-5 in
float32 against the reference).
"""

import logging

import jax
import jax.numpy as jnp
import pytest

from model import attention as attn
from model.config import get_preset
from model.host import cpu_devices_hint
from model.kernels import ACCEL_CHUNKED_MIN_QK, CPU_CHUNKED_MIN_QK, auto_choice
from model.kernels.accelerators import pallas_attention
from model.transformer import Transformer

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32
INTERPRET_TOL = 2e-5


# ---------------------------------------------------------------------------- auto_choice
def test_cpu_dense_for_short_chunked_for_long():
    assert auto_choice((4, 64, 4, 32), F32, "cpu", causal=True) == "reference"
    assert auto_choice((4, 256, 8, 64), F32, "cpu", causal=True) == "reference"
    assert auto_choice((4, 1024, 8, 64), F32, "cpu", causal=True) == "chunked"
    assert auto_choice((1, 32768, 8, 64), BF16, "cpu", causal=True) == "chunked"
    # the threshold is on Q * K, so a long prefix attended by a short chunk counts
    q_len = CPU_CHUNKED_MIN_QK // 4096
    assert auto_choice((1, q_len, 8, 64), F32, "cpu", k_len=4096) == "chunked"
    assert auto_choice((8, 1, 8, 64), F32, "cpu", k_len=100_000, per_batch_offset=True) == "reference"  # decode


@pytest.mark.parametrize(
    "kwargs, dtype, expected",
    [
        (dict(causal=True), BF16, "cudnn"),
        (dict(causal=True), F16, "cudnn"),
        (dict(causal=True, window=128), BF16, "cudnn"),
        (dict(causal=True, has_padding=True), BF16, "cudnn"),
        (dict(causal=True), F32, "xla"),  # cuDNN's flash kernel is half precision only
        (dict(causal=True, per_batch_offset=True), BF16, "xla"),  # no per-sequence decode offsets
        (dict(causal=True, q_offset_zero=False), BF16, "xla"),
        (dict(window=64), BF16, "xla"),  # bidirectional window
    ],
)
def test_gpu_rules(kwargs, dtype, expected):
    assert auto_choice((2, 1024, 8, 64), dtype, "gpu", **kwargs) == expected


def test_gpu_head_width_and_long_fallback():
    assert auto_choice((2, 1024, 8, 100), BF16, "gpu", causal=True) == "xla"  # not a multiple of 8
    assert auto_choice((2, 1024, 2, 256), BF16, "gpu", causal=True) == "xla"
    long_t = int(ACCEL_CHUNKED_MIN_QK**0.5)
    assert auto_choice((1, long_t, 8, 64), F32, "gpu", causal=True) == "chunked"


def test_tpu_rules():
    assert auto_choice((2, 1024, 8, 128), BF16, "tpu", causal=True) == "pallas"
    assert auto_choice((2, 1024, 8, 128), F32, "tpu", causal=True, window=256, has_padding=True) == "pallas"
    assert auto_choice((2, 1000, 8, 128), BF16, "tpu", causal=True) == "xla"  # not a multiple of 128
    assert auto_choice((2, 1024, 8, 128), BF16, "tpu", causal=True, per_batch_offset=True) == "xla"
    long_t = int(ACCEL_CHUNKED_MIN_QK**0.5) + 1
    assert auto_choice((1, long_t, 8, 128), BF16, "tpu", causal=True) == "chunked"


def test_entry_point_passes_the_mask_to_auto(monkeypatch):
    seen = {}

    def spy(q_shape, dtype, backend, **info):
        seen.update(info, backend=backend)
        return "reference"

    monkeypatch.setattr("model.kernels.auto_choice", spy)
    q = jnp.zeros((2, 8, 2, 4))
    attn.attention(q, q[:, :6], q[:, :6], causal=True, window=3, q_offset=jnp.array([1, 2]), implementation="auto")
    assert seen == dict(
        backend="cpu",
        k_len=6,
        causal=True,
        window=3,
        per_batch_offset=True,
        q_offset_zero=False,
        has_padding=False,
    )


def test_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(attn, "_logged_choices", set())
    q = jnp.zeros((1, 16, 2, 8))
    with caplog.at_level(logging.INFO, logger="model.attention"):
        for _ in range(3):
            attn.attention(q, q, q, causal=True, implementation="auto")
    msgs = [r.getMessage() for r in caplog.records if "'auto'" in r.getMessage()]
    assert msgs == ["attention implementation 'auto' -> 'reference' on backend 'cpu'"]


def test_override_through_model_config():
    cfg = get_preset("tiny").replace(n_layers=1)
    tokens = jnp.arange(2 * 20).reshape(2, 20) % cfg.vocab_size
    params = Transformer(cfg).init(jax.random.key(0), tokens)["params"]
    logits = {
        impl: jax.jit(Transformer(cfg.replace(attention_impl=impl)).apply)({"params": params}, tokens)
        for impl in ("reference", "chunked")
    }
    assert float(jnp.max(jnp.abs(logits["chunked"] - logits["reference"]))) < 1e-5
    # The config's choice is what runs: an accelerator kernel is refused on this CPU.
    with pytest.raises(ValueError, match="implementation='cudnn' needs an NVIDIA GPU"):
        Transformer(cfg.replace(attention_impl="cudnn")).apply({"params": params}, tokens)


# ---------------------------------------------------------------------------- accelerator kernels
def _qkv(b, t, h, g, d, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(ks[0], (b, t, h, d)),
        jax.random.normal(ks[1], (b, t, g, d)),
        jax.random.normal(ks[2], (b, t, g, d)),
    )


@pytest.mark.parametrize("impl, message", [("cudnn", "needs an NVIDIA GPU"), ("pallas", "needs a TPU or GPU")])
def test_accelerator_kernels_refuse_cpu(impl, message):
    q, k, v = _qkv(1, 16, 2, 2, 8)
    with pytest.raises(ValueError, match=message):
        attn.attention(q, k, v, causal=True, implementation=impl)


def test_pallas_refuses_unsupported_masks_clearly():
    q, k, v = _qkv(2, 64, 2, 2, 16)
    with pytest.raises(ValueError, match="one static q_offset"):
        pallas_attention(q, k, v, scale=0.25, causal=True, q_offset=jnp.array([0, 3]), platform="tpu", interpret=True)
    with pytest.raises(ValueError, match="no sliding window"):
        pallas_attention(q, k, v, scale=0.25, causal=True, window=8, platform="gpu", interpret=True)


def test_pallas_gpu_kernel_in_interpret_mode():
    # jax.experimental.pallas.ops.gpu.attention.mha (Triton flash attention) interpreted on CPU.
    q, k, v = _qkv(1, 64, 2, 1, 16)
    out = pallas_attention(q, k, v, scale=0.25, causal=True, platform="gpu", interpret=True)
    ref = attn.attention(q, k, v, causal=True, scale=0.25)
    assert float(jnp.max(jnp.abs(out - ref))) <= INTERPRET_TOL


def test_pallas_tpu_splash_in_interpret_mode():
    # Splash attention (TPU) interpreted on CPU: GQA groups, a causal window, padding as segment ids.
    q, k, v = _qkv(2, 128, 4, 2, 64)
    kw = dict(causal=True, window=40, kv_lengths=jnp.array([100, 128]))
    out = pallas_attention(q, k, v, scale=0.125, platform="tpu", interpret=True, **kw)
    ref = attn.attention(q, k, v, scale=0.125, **kw)
    assert float(jnp.max(jnp.abs(out - ref))) <= INTERPRET_TOL


@pytest.mark.slow
@pytest.mark.parametrize("platform, shape", [("gpu", (1, 64, 2, 1, 16)), ("tpu", (1, 128, 2, 1, 64))])
def test_pallas_gradients_in_interpret_mode(platform, shape):
    q, k, v = _qkv(*shape)
    scale = shape[-1] ** -0.5

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    g = jax.grad(
        loss(lambda q, k, v: pallas_attention(q, k, v, scale=scale, causal=True, platform=platform, interpret=True)),
        argnums=(0, 1, 2),
    )(q, k, v)
    g_ref = jax.grad(loss(lambda q, k, v: attn.attention(q, k, v, causal=True, scale=scale)), argnums=(0, 1, 2))(
        q, k, v
    )
    for a, b in zip(g, g_ref, strict=True):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5


def test_cpu_devices_hint_only_for_chunked_on_one_device_of_many_cores():
    hint = cpu_devices_hint("cpu", "chunked", devices=1, cores=2)
    assert "1 CPU device of 2 cores" in hint and "request_host_devices(2)" in hint and "\n" not in hint
    assert cpu_devices_hint("cpu", "chunked", devices=2, cores=2) is None  # already one device per core
    assert cpu_devices_hint("cpu", "chunked", devices=1, cores=1) is None  # nothing to gain
    assert cpu_devices_hint("cpu", "reference", devices=1, cores=2) is None  # short sequences: dense
    assert cpu_devices_hint("gpu", "chunked", devices=1, cores=2) is None


def test_long_sequence_choice_logs_no_hint_with_eight_devices(monkeypatch, caplog):
    """This test session has 8 CPU devices (conftest), so 'auto' -> chunked logs the choice and no hint."""
    monkeypatch.setattr(attn, "_logged_choices", set())
    q = jnp.zeros((1, 600, 2, 8))
    with caplog.at_level(logging.INFO, logger="model.attention"):
        attn.attention(q, q, q, causal=True, implementation="auto")
    msgs = [r.getMessage() for r in caplog.records]
    assert "attention implementation 'auto' -> 'chunked' on backend 'cpu'" in msgs
    assert not any("request_host_devices" in m for m in msgs)
