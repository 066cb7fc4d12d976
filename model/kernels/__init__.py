"""Alternative attention implementations behind ``model.attention.attention``.

Each module registers itself with ``model.attention.register_implementation`` on import.
``auto_choice`` is what ``implementation='auto'`` resolves to per backend.
"""

from __future__ import annotations

import jax.numpy as jnp


def auto_choice(q_shape: tuple[int, ...], dtype, backend: str) -> str:
    """The implementation 'auto' picks for queries of ``q_shape`` ([B, Q, H, Dh]) and ``dtype`` on ``backend``."""
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "xla"
    return "reference"
