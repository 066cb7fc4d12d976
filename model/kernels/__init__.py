"""Alternative attention implementations behind ``model.attention.attention``, and what 'auto' means.

Each module registers itself with ``model.attention.register_implementation`` on import:
chunked.py ('chunked'), accelerators.py ('cudnn', 'pallas'), ring.py (sequence-parallel, when present).

What ``implementation='auto'`` picks (:func:`auto_choice`), and why:

- CPU: 'reference' (dense einsum + masked softmax) while the score matrix is small, 'chunked' from
  ``Q * K >= CPU_CHUNKED_MIN_QK`` (512 x 512) on. Measured with ``python -m experiments.bench_attention``
  on the shared 2-core AVX-512 machine (B=4, H=8, Dh=64, causal, fp32; medians of interleaved calls):
  in a --quick run at T=256 dense and chunked were within noise (15-17 ms fwd, 32-46 ms fwd+bwd); from
  T=512 on chunked wins and the gap grows with T because it skips the masked half of the blocks and
  its memory is O(T). In the quiet run of 2026-11-27 (README; one XLA device per core, inputs
  sharded over them) it was 2.3-4.8x faster than 'reference' and 3.2-10.9x faster than 'xla' at
  T=1024..4096, with 31 MiB .. 0.22 GiB of scratch against 0.25 .. 6 GiB, and level with torch SDPA
  (auto/torch 0.95-0.97 in the cleanest run, 0.83-1.13 in others). On jax's default single CPU device
  it is 1.4-1.9x slower than torch: that device runs the block matmuls one at a time on one thread,
  so give XLA one device per core (``train.cli.request_host_devices``) and shard the batch. 'xla'
  (jax.nn.dot_product_attention) is never chosen on CPU: it is the slowest path there. A decode step
  (Q=1) stays 'reference' (its scores are one row).
- GPU: 'cudnn' (cuDNN flash attention) for float16/bfloat16 with a head width it takes and a mask it
  supports (:func:`model.kernels.accelerators.cudnn_supports`); otherwise 'chunked' for long
  sequences (memory O(T)) and 'xla' for short ones. (Not measured here: no GPU on this machine.)
- TPU: 'pallas' (splash attention) where its block constraints hold
  (:func:`model.kernels.accelerators.pallas_supports`); otherwise as on GPU. (Not measured here.)

A model overrides the choice with ``ModelConfig.attention_impl``; the choice is logged once per
(backend, choice) by ``model.attention.select_implementation``.
"""

from __future__ import annotations

import importlib.util

import jax.numpy as jnp

from model.kernels import accelerators, chunked  # noqa: F401  (register 'chunked', 'cudnn', 'pallas')
from model.kernels.accelerators import cudnn_supports, pallas_supports

if importlib.util.find_spec("model.kernels.ring") is not None:  # written separately; registers 'ring'
    from model.kernels import ring  # noqa: F401

# 'auto' on CPU switches from the dense reference to the chunked kernel at this many scores per head
# (Q * K); see the module docstring for the measurement behind it.
CPU_CHUNKED_MIN_QK = 512 * 512
# On GPU/TPU, when the vendor kernel cannot take a call, dense XLA up to this many scores per head
# and the chunked kernel beyond (dense memory grows as Q * K).
ACCEL_CHUNKED_MIN_QK = 4096 * 4096


def auto_choice(
    q_shape: tuple[int, ...],
    dtype,
    backend: str,
    *,
    k_len: int | None = None,
    causal: bool = False,
    window: int | None = None,
    per_batch_offset: bool = False,
    q_offset_zero: bool = True,
    has_padding: bool = False,
) -> str:
    """The implementation 'auto' picks for queries ``q_shape`` ([B, Q, H, Dh]) of ``dtype`` on ``backend``.

    The keyword arguments describe the keys and the mask (K, causal, sliding window, a per-batch
    decode offset, whether q_offset is 0, padding lengths); without them the call is taken to be
    self-attention (K = Q) with no mask, which is what the accelerator rules need to know.
    """
    if len(q_shape) != 4:
        raise ValueError(f"auto_choice: q_shape must be [batch, length, heads, head_dim], got {q_shape}")
    q_len = q_shape[1]
    k_len = q_len if k_len is None else k_len
    scores = q_len * k_len
    dtype = jnp.dtype(dtype)
    if backend == "gpu":
        why = cudnn_supports(
            q_shape,
            dtype,
            k_len=k_len,
            causal=causal,
            window=window,
            per_batch_offset=per_batch_offset,
            q_offset_zero=q_offset_zero,
        )
        if why is None:
            return "cudnn"
        return "chunked" if scores >= ACCEL_CHUNKED_MIN_QK else "xla"
    if backend == "tpu":
        why = pallas_supports(
            q_shape,
            dtype,
            "tpu",
            k_len=k_len,
            causal=causal,
            window=window,
            per_batch_offset=per_batch_offset,
            has_padding=has_padding,
        )
        if why is None:
            return "pallas"
        return "chunked" if scores >= ACCEL_CHUNKED_MIN_QK else "xla"
    # CPU (and any other backend): measured, see the module docstring.
    if q_len > 1 and scores >= CPU_CHUNKED_MIN_QK:
        return "chunked"
    return "reference"


__all__ = ["ACCEL_CHUNKED_MIN_QK", "CPU_CHUNKED_MIN_QK", "auto_choice"]
