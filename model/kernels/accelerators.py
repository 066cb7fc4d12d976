"""Vendor kernels behind ``attention(..., implementation='xla' | 'cudnn' | 'pallas')``.

- 'xla': ``jax.nn.dot_product_attention(implementation='xla')`` (any backend; the slowest path on CPU).
- 'cudnn': cuDNN's fused flash attention through ``jax.nn.dot_product_attention(implementation='cudnn')``
  (NVIDIA GPUs; float16/bfloat16; head width a multiple of 8 up to 128 (256 on recent cuDNN);
  causal from position 0, sliding windows and padding lengths; no per-batch decode offsets).
- 'pallas': on TPU the splash-attention kernel (``jax.experimental.pallas.ops.tpu.splash_attention``;
  causal/local masks, padding by segment ids, GQA as multi-query groups); on GPU the Pallas
  flash-attention kernel (``jax.experimental.pallas.ops.gpu.attention.mha``; causal, self-attention,
  lengths a multiple of its block).

'cudnn' and 'pallas' cannot run on a CPU: asked for there, they raise one clear error naming a path that can.
``pallas_attention(..., interpret=True)`` runs the Pallas kernels in Pallas's interpreter on any
backend (slow; what tests/test_dispatch.py does on CPU at tiny sizes). :func:`cudnn_supports` and
:func:`pallas_supports` are the shape/dtype/mask rules that ``auto_choice`` consults.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

Array = jax.Array


def _backend_of(x: Array) -> str:
    """Platform of the devices holding ``x`` (the default backend for tracers)."""
    try:
        return next(iter(x.devices())).platform
    except Exception:  # a tracer under jit: its devices are not known yet
        return jax.default_backend()


def _static_offset(q_offset) -> int | None:
    """q_offset as a Python int when it is one (or a concrete scalar), else None."""
    if isinstance(q_offset, int):
        return q_offset
    try:
        arr = jnp.asarray(q_offset)
        if arr.ndim == 0:
            return int(arr)
    except (jax.errors.ConcretizationTypeError, TypeError):
        pass
    return None


def _zero_dead_rows(out: Array, mask: Array | None) -> Array:
    """A row whose every key is masked is 0 in every implementation (these kernels may give the mean of v)."""
    if mask is None:
        return out
    alive = einops.rearrange(jnp.any(mask, axis=-1), "b h q -> b q h 1")
    return jnp.where(alive, out, jnp.zeros((), out.dtype))


# ---------------------------------------------------------------------------- XLA
def xla_attention(q, k, v, *, mask, scale, **_):
    """``jax.nn.dot_product_attention(implementation='xla')``, fully masked rows zeroed.

    jax gives a fully masked row the mean of the values (it masks with a large negative number); zero
    those rows so every implementation means the same thing.
    """
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
    return _zero_dead_rows(out, mask)


# ---------------------------------------------------------------------------- cuDNN
def cudnn_supports(
    q_shape, dtype, *, k_len: int | None = None, causal=False, window=None, per_batch_offset=False, q_offset_zero=True
) -> str | None:
    """None when cuDNN flash attention takes this call, else the reason it does not."""
    dh = q_shape[-1]
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
        return f"cuDNN flash attention needs float16 or bfloat16 inputs, got {jnp.dtype(dtype).name}"
    if dh % 8 or dh > 128:
        return f"cuDNN flash attention needs a head width that is a multiple of 8 and <= 128, got {dh}"
    if per_batch_offset or ((causal or window is not None) and not q_offset_zero):
        return "cuDNN flash attention has no decode offset (q_offset); the causal mask starts at position 0"
    if window is not None and not causal:
        return "cuDNN flash attention's sliding window is causal only"
    return None


def cudnn_attention(q, k, v, *, mask=None, scale, causal, q_offset, kv_lengths, q_lengths, window, **_):
    """cuDNN flash attention with this codebase's masks; q ``[B,Q,H,Dh]``, k/v ``[B,K,G,Dh]``."""
    backend = _backend_of(q)
    if backend != "gpu" and jax.default_backend() != "gpu":
        raise ValueError(
            f"implementation='cudnn' needs an NVIDIA GPU, but the backend is {backend!r}; "
            f"use implementation='auto' (or 'chunked' / 'xla')"
        )
    offset = _static_offset(q_offset)
    why = cudnn_supports(
        q.shape,
        q.dtype,
        k_len=k.shape[1],
        causal=causal,
        window=window,
        per_batch_offset=offset is None,
        q_offset_zero=offset == 0,
    )
    if why is not None:
        raise ValueError(f"implementation='cudnn' cannot take this call: {why}; use implementation='auto'")
    b = q.shape[0]
    q_len = None if q_lengths is None else jnp.broadcast_to(jnp.asarray(q_lengths, jnp.int32), (b,))
    kv_len = None if kv_lengths is None else jnp.broadcast_to(jnp.asarray(kv_lengths, jnp.int32), (b,))
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=causal,
        query_seq_lengths=q_len,
        key_value_seq_lengths=kv_len,
        local_window_size=None if window is None else (window - 1, 0),
        implementation="cudnn",
    )
    return _zero_dead_rows(out, mask)


# ---------------------------------------------------------------------------- Pallas
_SPLASH_BLOCK = 128  # splash attention tiles q and kv in multiples of 128 (TPU lanes)
_GPU_BLOCK = 64  # blocks of the Pallas GPU kernel used here (lengths must be multiples)


def pallas_supports(
    q_shape, dtype, backend: str, *, k_len=None, causal=False, window=None, per_batch_offset=False, has_padding=False
) -> str | None:
    """None when the Pallas kernel of ``backend`` takes this call, else the reason it does not."""
    _, q_len, _, dh = q_shape
    k_len = q_len if k_len is None else k_len
    if per_batch_offset:
        return "the Pallas kernels take one static q_offset for the whole batch, not one per sequence"
    if backend == "tpu":
        if q_len % _SPLASH_BLOCK or k_len % _SPLASH_BLOCK:
            return f"splash attention needs lengths that are multiples of {_SPLASH_BLOCK}, got Q={q_len}, K={k_len}"
        return None
    if backend == "gpu":
        if window is not None:
            return "the Pallas GPU kernel has no sliding window"
        if q_len != k_len or q_len % _GPU_BLOCK:
            return f"the Pallas GPU kernel needs Q == K, a multiple of {_GPU_BLOCK}; got Q={q_len}, K={k_len}"
        if has_padding:
            return "the Pallas GPU kernel here takes no padding lengths"
        return None
    return f"the Pallas kernels run on TPU or GPU, not {backend!r}"


def _splash(q, k, v, *, scale, causal, q_offset, kv_lengths, q_lengths, window, interpret):
    """Splash attention (TPU): q ``[B,Q,H,Dh]``, k/v ``[B,K,G,Dh]``; GQA as G multi-query kernels of R heads."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, q_len, h, _ = q.shape
    k_len, g = k.shape[1], k.shape[2]
    r = h // g
    offset = _static_offset(q_offset) or 0
    # Splash's masks put query i at position i + offset against keys 0..K-1 (our convention).
    if window is not None:
        one = sm.LocalMask((q_len, k_len), (window - 1, 0 if causal else window - 1), offset=offset)
    elif causal:
        one = sm.CausalMask((q_len, k_len), offset=offset)
    else:
        one = sm.FullMask((q_len, k_len))
    block = min(_SPLASH_BLOCK, q_len, k_len)
    sizes = sk.BlockSizes(
        block_q=block, block_kv=block, block_q_dkv=block, block_kv_dkv=block, block_q_dq=block, block_kv_dq=block
    )
    kernel = sk.make_splash_mqa_single_device(sm.MultiHeadMask([one] * r), block_sizes=sizes, interpret=interpret)

    segments = None
    if kv_lengths is not None or q_lengths is not None:
        # Padding as segment ids: real tokens are segment 0, padding segment 1 (keys) / 2 (queries).
        kv_l = jnp.broadcast_to(jnp.asarray(k_len if kv_lengths is None else kv_lengths, jnp.int32), (b,))
        q_l = jnp.broadcast_to(jnp.asarray(q_len if q_lengths is None else q_lengths, jnp.int32), (b,))
        seg_q = jnp.where(jnp.arange(q_len)[None] < q_l[:, None], 0, 2).astype(jnp.int32)
        seg_kv = jnp.where(jnp.arange(k_len)[None] < kv_l[:, None], 0, 1).astype(jnp.int32)
        segments = sk.SegmentIds(q=seg_q, kv=seg_kv)

    qs = einops.rearrange(q * jnp.asarray(scale, q.dtype), "b q (g r) d -> b g r q d", g=g)
    ks = einops.rearrange(k, "b k g d -> b g k d")
    vs = einops.rearrange(v, "b k g d -> b g k d")

    def one_group(qg, kg, vg, seg):
        return kernel(qg, kg, vg, segment_ids=seg)

    def one_example(qe, ke, ve, seg):
        return jax.vmap(lambda a, c, d: one_group(a, c, d, seg))(qe, ke, ve)

    if segments is None:
        out = jax.vmap(lambda a, c, d: one_example(a, c, d, None))(qs, ks, vs)
    else:
        out = jax.vmap(one_example)(qs, ks, vs, segments)
    return einops.rearrange(out, "b g r q d -> b q (g r) d")


def _pallas_gpu(q, k, v, *, scale, causal, interpret):
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    h = q.shape[2]
    block = min(_GPU_BLOCK, q.shape[1])
    sizes = gpu_attention.BlockSizes(
        block_q=block,
        block_k=block,
        block_q_dkv=min(32, block),
        block_kv_dkv=min(32, block),
        block_q_dq=min(32, block),
        block_kv_dq=min(32, block),
    )
    return gpu_attention.mha(
        q,
        jnp.repeat(k, h // k.shape[2], axis=2),  # query head i reads key/value head i // R, as in GQA
        jnp.repeat(v, h // v.shape[2], axis=2),
        None,
        sm_scale=scale,
        causal=causal,
        block_sizes=sizes,
        interpret=interpret,
    )


def pallas_attention(
    q,
    k,
    v,
    *,
    mask=None,
    scale,
    causal=False,
    q_offset=0,
    kv_lengths=None,
    q_lengths=None,
    window=None,
    platform: str | None = None,
    interpret: bool = False,
    **_,
):
    """The Pallas kernel of ``platform`` ('tpu' splash, 'gpu' flash; default: the backend of q).

    ``interpret=True`` runs it in the Pallas interpreter on any backend (for tests). Returns
    ``[B, Q, H, Dh]``; wholly masked rows are 0.
    """
    backend = _backend_of(q)
    platform = platform or backend
    if not interpret and platform not in ("tpu", "gpu"):
        raise ValueError(
            f"implementation='pallas' needs a TPU or GPU, but the backend is {platform!r}; "
            f"use implementation='auto' (or 'chunked' / 'xla')"
        )
    offset = _static_offset(q_offset)
    why = pallas_supports(
        q.shape,
        q.dtype,
        platform,
        k_len=k.shape[1],
        causal=causal,
        window=window,
        per_batch_offset=offset is None,
        has_padding=kv_lengths is not None or q_lengths is not None,
    )
    if platform == "gpu" and why is None and causal and offset:
        why = "the Pallas GPU kernel's causal mask starts at position 0 (no q_offset)"
    if why is not None:
        raise ValueError(f"implementation='pallas' cannot take this call: {why}; use implementation='auto'")
    if platform == "tpu":
        masks = dict(causal=causal, q_offset=q_offset, kv_lengths=kv_lengths, q_lengths=q_lengths, window=window)
        out = _splash(q, k, v, scale=scale, interpret=interpret, **masks)
    else:
        out = _pallas_gpu(q, k, v, scale=scale, causal=causal, interpret=interpret)
    return _zero_dead_rows(out, mask)
