"""The attention implementations behind ``model.attention.attention``, and what 'auto' means.

This is the one place that registers them (model/kernels/registry.py holds the records; 'reference'
is registered by model/attention.py): 'xla', 'cudnn', 'pallas' (accelerators.py), 'chunked'
(chunked.py), 'ring' (ring.py). model/kernels/blocks.py is the mask rule and the block steps that
chunked.py and ring.py share.

What ``implementation='auto'`` picks (:func:`auto_choice`), and why:

- CPU: 'reference' (dense einsum + masked softmax) while the score matrix is small, 'chunked' from
  ``Q * K >= CPU_CHUNKED_MIN_QK`` (512 x 512) on: at T=256 the two are within noise, from T=512 on
  chunked wins and the gap grows with T, because it skips the masked half of the blocks and its
  memory is O(T) (``python -m experiments.bench.attention``; the figures are in the README's
  "Attention implementations" section). Give XLA one device per core
  (``model.host.request_host_devices``) and shard the batch: one CPU device runs the kernel's block
  matmuls one at a time on one thread. 'xla' (jax.nn.dot_product_attention) is never chosen on CPU:
  it is the slowest path there. A decode step (Q=1) stays 'reference' (its scores are one row).
- GPU: 'cudnn' (cuDNN flash attention) for float16/bfloat16 with a head width it takes and a mask it
  supports (:func:`model.kernels.accelerators.cudnn_supports`); otherwise 'chunked' for long
  sequences (memory O(T)) and 'xla' for short ones. (Not measured here: no GPU on this machine.)
- TPU: 'pallas' (splash attention) where its block constraints hold
  (:func:`model.kernels.accelerators.pallas_supports`); otherwise as on GPU. (Not measured here.)

A model overrides the choice with ``ModelConfig.attention_impl``; the choice is logged once per
(backend, choice) by ``model.attention.select_implementation``.
"""

from __future__ import annotations

import jax.numpy as jnp

from model.kernels import accelerators, chunked, ring
from model.kernels.accelerators import cudnn_supports, pallas_supports
from model.kernels.registry import REGISTRY, Implementation, register

# In the order config.IMPLEMENTATIONS lists them, after 'auto' and 'reference'.
register(Implementation("xla", accelerators.xla_attention))
register(Implementation("chunked", chunked.chunked_attention, dense_mask=False))
register(Implementation("ring", ring.ring_attention, dense_mask=False))  # over the mesh's 'sequence' axis
register(Implementation("cudnn", accelerators.cudnn_attention))
register(Implementation("pallas", accelerators.pallas_attention))

# 'auto' on CPU switches from the dense reference to the chunked kernel at this many scores per head
# (Q * K); see the module docstring for why.
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
    rules = dict(k_len=k_len, causal=causal, window=window, per_batch_offset=per_batch_offset)
    if backend == "gpu":
        vendor = "cudnn" if cudnn_supports(q_shape, dtype, **rules, q_offset_zero=q_offset_zero) is None else None
    elif backend == "tpu":
        vendor = "pallas" if pallas_supports(q_shape, dtype, "tpu", **rules, has_padding=has_padding) is None else None
    else:  # CPU (and any other backend): measured, see the module docstring
        return "chunked" if q_len > 1 and scores >= CPU_CHUNKED_MIN_QK else "reference"
    return vendor or ("chunked" if scores >= ACCEL_CHUNKED_MIN_QK else "xla")


__all__ = ["ACCEL_CHUNKED_MIN_QK", "CPU_CHUNKED_MIN_QK", "REGISTRY", "Implementation", "auto_choice", "register"]
