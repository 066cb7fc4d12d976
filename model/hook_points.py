"""Hook points: the places where a cache may read, and an intervention may replace, an activation.

The modules of model/layers.py and model/transformer.py call ``point(self, "hook_z", z)`` at each
TransformerLens-named activation. Outside :func:`hooking` (every ordinary forward, training included)
``point`` returns its argument untouched and adds nothing to the traced program: the compiled
forward is the same program as without hook points (tests/test_hooks.py compares the lowered text).

Inside ``with hooking(collect=True, names=..., hooks={...})`` a point
  * sows the activation into the 'intermediates' collection (kept only when the caller made that
    collection mutable: ``model.apply(..., mutable=["intermediates"])``), and
  * returns ``hooks[full_name](activation)`` when a hook is registered for its full name.

Full names are TransformerLens's: a module path ``('block_2', 'attention')`` and the point
``hook_z`` give ``blocks.2.attn.hook_z``. Under ``nn.scan`` the layer index is a traced loop
variable, so the name is ``blocks.*.attn.hook_z``: caching works (sow stacks the layers), but an
intervention needs unrolled layers (model.hooks.run_with_hooks unrolls them). The state is a
context variable read while tracing, so ``hooking`` must enclose the trace (the jit call's first run).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_RENAME = {"attention": "attn"}  # our module names -> TransformerLens's (the rest agree)


@dataclass(frozen=True)
class HookState:
    collect: bool = False
    names: frozenset[str] | None = None  # layer-agnostic patterns ('blocks.*.attn.hook_z'); None: all
    hooks: dict[str, Callable] = field(default_factory=dict)


_STATE: contextvars.ContextVar[HookState | None] = contextvars.ContextVar("hook_state", default=None)


def agnostic(name: str) -> str:
    """``blocks.3.attn.hook_z`` -> ``blocks.*.attn.hook_z`` (what a scanned layer can match)."""
    return re.sub(r"^blocks\.\d+\.", "blocks.*.", name)


@contextlib.contextmanager
def hooking(*, collect: bool = False, names: Iterable[str] | None = None, hooks: dict | None = None):
    """Turn hook points on while tracing: sow (``collect``) the ``names`` (None: all) and apply ``hooks``."""
    patterns = None if names is None else frozenset(agnostic(n) for n in names)
    token = _STATE.set(HookState(collect, patterns, dict(hooks or {})))
    try:
        yield
    finally:
        _STATE.reset(token)


def full_name(module, name: str) -> str:
    """TransformerLens's name of hook point ``name`` inside ``module`` (see the module docstring)."""
    parts: list[str] = []
    for p in module.path:
        m = re.fullmatch(r"block_(\d+)", p)
        if m:
            parts += ["blocks", m[1]]
        elif p == "blocks":
            parts += ["blocks", "*"]
        else:
            parts.append(_RENAME.get(p, p))
    return ".".join([*parts, name])


def _hook_for(state: HookState, full: str) -> Callable | None:
    if "*" in full:
        if any(agnostic(k) == full for k in state.hooks):
            raise ValueError(
                f"hook on {full}: interventions need unrolled layers (scan_layers=False); "
                "model.hooks.run_with_hooks unrolls them"
            )
        return None
    return state.hooks.get(full)


def _collects(state: HookState, full: str) -> bool:
    return state.collect and (state.names is None or agnostic(full) in state.names)


def active(module, name: str) -> bool:
    """Whether point ``name`` of ``module`` is cached or hooked in the current trace (False outside hooking)."""
    state = _STATE.get()
    if state is None:
        return False
    full = full_name(module, name)
    return _collects(state, full) or _hook_for(state, full) is not None


def point(module, name: str, x):
    """``x``, or the registered hook's ``fn(x)``; what it returns is sown into 'intermediates' when collecting."""
    state = _STATE.get()
    if state is None:
        return x
    full = full_name(module, name)
    fn = _hook_for(state, full)
    x = x if fn is None else fn(x)
    if _collects(state, full):
        module.sow("intermediates", name, x)
    return x


def record(module, name: str, make: Callable):
    """A read-only point: sow ``make()`` when collecting; ``make`` is never called otherwise."""
    state = _STATE.get()
    if state is None:
        return
    full = full_name(module, name)
    if _hook_for(state, full) is not None:
        raise ValueError(f"{full} can be cached but not replaced; hook the point it is computed from")
    if _collects(state, full):
        module.sow("intermediates", name, make())
