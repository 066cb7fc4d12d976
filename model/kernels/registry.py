"""The implementations behind ``attention(..., implementation=name)``: one record each, in one dict.

    register(Implementation("mine", my_attention, dense_mask=False))   # then implementation="mine"

model/kernels/__init__.py registers the kernels of this package, model/attention.py registers
'reference'; anyone may register more. ``model.config.IMPLEMENTATIONS`` is derived from here.
Nothing here imports the rest of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Implementation:
    """One attention implementation and what the entry point must do for it.

    fn: ``fn(q, k, v, *, mask, scale, causal, q_offset, kv_lengths, q_lengths, window) -> out``
    (``mask`` only when ``dense_mask``), q ``[B, Q, H, Dh]``, k/v ``[B, K, G, Dh]``, out ``[B, Q, H, Dh]``; one that returns the pattern or
    drops out entries of it also takes ``return_pattern``, ``dropout_rate`` and ``dropout_rng`` and
    returns ``(out, pattern)`` when asked for the pattern.
    """

    name: str
    fn: Callable
    dense_mask: bool = True  # gets the [B|1, 1, Q, K] mask built by the entry point (False: builds its own)
    returns_pattern: bool = False  # can return the attention pattern
    dropout: bool = False  # can drop out entries of the pattern (takes dropout_rate, dropout_rng)
    one_head_width: bool = True  # wants q, k and v equally wide: the entry point pads the narrower with zeros


REGISTRY: dict[str, Implementation] = {}


def register(impl: Implementation) -> Implementation:
    """Make ``impl`` available as ``attention(..., implementation=impl.name)`` (replacing one of that name)."""
    REGISTRY[impl.name] = impl
    return impl
